--[[ claim_id.lua: a caller's job id, claimed for one submission (one round trip).

KEYS[1]  job record hash            bot:job:{job_id}
ARGV[1]  job id
ARGV[2]  op name
ARGV[3]  queue
ARGV[4]  payload digest: binds the id to what was submitted (acquire.lua refuses another)
ARGV[5]  now (ms): the enqueue time
ARGV[6]  seconds the record lives until a worker takes the job (BOT_JOB_TTL)

Returns 1 when the record was created `queued`, 0 when the id is known already (an idempotent
resubmission: nothing is written).
]]
if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'op', ARGV[2], 'queue', ARGV[3],
  'digest', ARGV[4], 'enqueued_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return 1
