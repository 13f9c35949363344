--[[ run_end.lua: a pipeline run ends, with its one report (atomic, once).

KEYS[1]  run record hash            bot:pipeline:{run_id}
KEYS[2]  outbox stream              bot:outbox
KEYS[3]  running runs zset          bot:pipelines:running
KEYS[4]  fleet counters hash        bot:stats (pipeline_runs_<state> + 1)
ARGV[1]  run id
ARGV[2]  final state: succeeded | failed
ARGV[3]  outcome JSON ({"result": ...} or {"error": ...})
ARGV[4]  report JSON
ARGV[5]  now (ms)
ARGV[6]  seconds the record lives after the end (BOT_JOB_TTL)

Returns {1, outbox entry id} when this call ended the run; {0, state, report id} when it had
ended already (nothing is written: a run has exactly one report); {-1} when the run has no
record (never started, or expired).
]]
local cur = redis.call('HMGET', KEYS[1], 'state', 'report_id')
if not cur[1] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {-1}
end
if cur[1] == 'succeeded' or cur[1] == 'failed' then
  return {0, cur[1], cur[2] or ''}
end
local entry = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[1], 'report', ARGV[4])
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'outcome', ARGV[3], 'updated_at', ARGV[5],
  'finished_at', ARGV[5], 'report_id', entry)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'pipeline_runs_' .. ARGV[2], 1)
return {1, entry}
