--[[ unlock.lua: release a lock only if this holder still holds it.

KEYS[1]  the lock                   e.g. bot:reaper:lock
ARGV[1]  the holder's token

Returns 1 when released, 0 when the lock expired or another holder has it.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
