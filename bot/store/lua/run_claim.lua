--[[ run_claim.lua: a caller's pipeline run id, claimed for one submission (one round trip).

KEYS[1]  run record hash            bot:pipeline:{run_id}
ARGV[1]  run id
ARGV[2]  pipeline name
ARGV[3]  queue of the start task
ARGV[4]  payload digest
ARGV[5]  now (ms)
ARGV[6]  seconds the record lives until the run starts (BOT_JOB_TTL)

Returns 1 when the record was created `queued`, 0 when the run id is known already.
]]
if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'pipeline', ARGV[2], 'queue', ARGV[3],
  'digest', ARGV[4], 'enqueued_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return 1
