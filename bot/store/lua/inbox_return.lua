--[[ inbox_return.lua: put every message a consumer's inboxes hold back on the consuming end of
the queue lists they were taken from (bot/broker/inbox.py).

KEYS[1..n]     inboxes              bot:inbox:{instance_id}:{list}
KEYS[n+1..2n]  the list each inbox was filled from

Run by a consumer before it consumes a queue (after a reconnect: a take whose reply was lost)
and by the reaper for a dead instance. The newest is moved first, so the oldest ends up
taken next. Returns how many messages went back.
]]
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  while redis.call('LMOVE', KEYS[i], KEYS[n + i], 'LEFT', 'RIGHT') do
    moved = moved + 1
  end
end
return moved
