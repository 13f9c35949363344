--[[ run_stage.lua: one stage job's state in its pipeline run's record.

KEYS[1]  run record hash            bot:pipeline:{run_id}
ARGV[1]  member field ('s<stage>.<member>')
ARGV[2]  the job's state: running | succeeded | failed | rejected | dead | skipped
ARGV[3]  the stage's index (1-based): the run's current stage becomes at least this
ARGV[4]  now (ms)
ARGV[5]  seconds the record lives without a change (BOT_JOB_TTL)

A member state that is final (succeeded, failed, rejected, dead: a job's final state never
changes) is not overwritten: not by `running` (a late write of an earlier attempt), nor by
`skipped` (a copy of the stage's message arriving after the run ended). An ended run keeps its
current stage. Returns 0 when the record is gone, else 1.
]]
local cur = redis.call('HMGET', KEYS[1], 'state', 'stage', ARGV[1])
if not cur[1] then
  return 0
end
local member = cur[3]
local final = member == 'succeeded' or member == 'failed' or member == 'rejected' or member == 'dead'
if not final then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
if cur[1] == 'running' and tonumber(cur[2] or '0') < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'stage', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
