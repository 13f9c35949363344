--[[ inbox_pop.lua: take the next message off a consumer's queue lists into its inbox, in one
step (bot/broker/inbox.py). Never blocks: the channel waits with BLMOVE when this finds none.

KEYS[1..n]     the queue lists to read, in kombu's order (priority, then queue)
KEYS[n+1..2n]  the consumer's inbox for each of them (bot:inbox:{instance_id}:{list})

Returns {i, message} for the first list i that had one (moved from its consuming end onto
the inbox), or false when every list is empty. Until the consumer has recorded the message
as unacked (and removed it from the inbox in the same MULTI), the inbox holds it: a reply
lost to a Redis shutdown or a consumer killed in between leaves it there to be returned.
]]
local n = #KEYS / 2
for i = 1, n do
  local message = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'RIGHT', 'LEFT')
  if message then
    return {i, message}
  end
end
return false
