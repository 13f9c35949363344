--[[ outbox_dead.lua: move one pending entry a sink refused too often to the dead stream (atomic).

KEYS[1]  source stream               bot:outbox (or bot:outbox:replay:{group})
KEYS[2]  dead stream                 bot:outbox:dead
ARGV[1]  consumer group (the sink)   e.g. http
ARGV[2]  entry id in the source stream
ARGV[3]  deliveries made             (the pending entry's delivery count)
ARGV[4]  reason                      the last failure, e.g. 'HTTP 500'

Returns the dead entry's id; 'gone' when the entry no longer exists (it was trimmed or XDEL'd:
its pending id read back as nil) and was only acked; 'acked' when the group no longer owes it
(another relay delivered it meanwhile): nothing is dead-lettered then.

The source entry is acked for this group but NOT deleted: other groups may still owe it, and
retention trimming removes it once no group does.
]]
local src, group, id = KEYS[1], ARGV[1], ARGV[2]
local owed = redis.call('XPENDING', src, group, id, id, 1)
if #owed == 0 then
  return 'acked'
end
local entry = redis.call('XRANGE', src, id, id)
if #entry == 0 then
  redis.call('XACK', src, group, id)
  return 'gone'
end
local fields = entry[1][2]
local job_id, report = '', ''
for i = 1, #fields, 2 do
  if fields[i] == 'job_id' then job_id = fields[i + 1] end
  if fields[i] == 'report' then report = fields[i + 1] end
end
local dead = redis.call('XADD', KEYS[2], '*', 'job_id', job_id, 'report', report,
  'group', group, 'source', src, 'source_id', id, 'deliveries', ARGV[3], 'reason', ARGV[4])
redis.call('XACK', src, group, id)
return dead
