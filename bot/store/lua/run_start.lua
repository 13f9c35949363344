--[[ run_start.lua: a pipeline run begins (its start task ran), or says it had begun already.

KEYS[1]  run record hash            bot:pipeline:{run_id}
KEYS[2]  running runs zset          bot:pipelines:running
ARGV[1]  run id
ARGV[2]  pipeline name
ARGV[3]  plan JSON: one {ops, jobs} object per stage
ARGV[4]  now (ms)
ARGV[5]  seconds the record lives without a change (BOT_JOB_TTL; each stage change renews it)
ARGV[6]  payload digest ('' when the run was not claimed by a caller's id)
ARGV[7..] one member field name per stage job ('s<stage>.<member>'), set `queued`

Returns 'started'; 'running' when the run had begun (its start task is delivered again: the
caller sends the same stages again, which the stage jobs' ids make harmless); 'ended' when it
ended; 'reused' when a caller's run id was claimed for another pipeline or payload.
]]
local cur = redis.call('HMGET', KEYS[1], 'state', 'pipeline', 'digest')
local state = cur[1]
if state == 'succeeded' or state == 'failed' then
  return 'ended'
end
if state and ((cur[2] and cur[2] ~= ARGV[2]) or (ARGV[6] ~= '' and cur[3] and cur[3] ~= ARGV[6])) then
  return 'reused'
end
if state == 'running' then
  return 'running'
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'pipeline', ARGV[2], 'plan', ARGV[3],
  'state', 'running', 'stage', '1', 'started_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('HSETNX', KEYS[1], 'enqueued_at', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('HSETNX', KEYS[1], 'digest', ARGV[6])
end
for i = 7, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], 'queued')
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 'started'
