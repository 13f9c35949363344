--[[ deregister.lua: a worker leaves the fleet (warm or cold shutdown).

KEYS[1]  worker record hash     bot:worker:{instance_id}
KEYS[2]  liveness lease         bot:lease:{instance_id}
KEYS[3]  registry zset          bot:workers
KEYS[4]  in-flight set          bot:inflight:{instance_id}
ARGV[1]  instance id

The record and the lease always go. The registry entry goes too unless the in-flight set
still names jobs (a cold shutdown killed them): then the entry stays, so the reaper, which
walks bot:workers, finds a member without a lease and hands those jobs back.
Returns the number of jobs left in flight.
]]
redis.call('DEL', KEYS[1], KEYS[2])
local left = redis.call('SCARD', KEYS[4])
if left == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return left
