--[[ outbox_trim.lua: trim a stream to a retention target, never past what a group still owes.

KEYS[1]  stream                      bot:outbox (or a replay stream)
ARGV[1]  target MINID 'ms-seq': entries below it are old enough (age) or too many (length)

Redis 7.0 has no ACKED trimming (8.2+), so the floor is computed here from every consumer
group: the lowest id in its pending list (a nil-reading XDEL'd id only keeps more) and the
first id after its last-delivered id (entries it has not read yet). Done in one script so a
group created or an entry read between the reads and the XTRIM cannot be trimmed away.

Returns {entries trimmed, the MINID used}.
]]
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function successor(id)
  local ms, seq = parse(id)
  return string.format('%.0f-%.0f', ms, seq + 1)
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, ARGV[1]}
end
local minid = ARGV[1]
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local unread = successor(info['last-delivered-id'])
  if less(unread, minid) then minid = unread end
  if info['pending'] > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    if less(summary[2], minid) then minid = summary[2] end
  end
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid)
return {trimmed, minid}
