--[[ forget_instance.lua: drop a dead instance from the registry once its jobs are handed back.

KEYS[1]  registry zset              bot:workers
KEYS[2]  worker record hash         bot:worker:{instance_id}
KEYS[3]  in-flight set              bot:inflight:{instance_id}
KEYS[4]  liveness lease             bot:lease:{instance_id}
ARGV[1]  instance id

Returns 1 when forgotten; 0 when the lease came back (the instance was only paused) or jobs
are still in its in-flight set (the next reaper pass deals with them first).
]]
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
if redis.call('SCARD', KEYS[3]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
