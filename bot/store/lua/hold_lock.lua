--[[ hold_lock.lua: take a lock, or keep it when this holder has it already (one round trip).

KEYS[1]  the lock                   e.g. bot:reaper:lock
ARGV[1]  the holder's token         fixed for the life of the holder
ARGV[2]  TTL (ms)

A periodic fleet-wide job (the reaper) takes the lock and does not release it: the lock then
stands for "this interval's pass is done", so the fleet runs one pass per interval whatever
its size, and the same holder keeps passing while it lives. Another holder gets it once it
expires (its holder died or stopped passing).
Returns 1 when this holder has the lock (for TTL from now), 0 when another has it.
]]
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
