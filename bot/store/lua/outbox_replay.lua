--[[ outbox_replay.lua: put one dead entry back into delivery for the group that refused it.

KEYS[1]  dead stream                 bot:outbox:dead
KEYS[2]  that group's replay stream  bot:outbox:replay:{group}
ARGV[1]  dead entry id
ARGV[2]  group the caller read from the entry (checked again here)

Returns the new replay entry's id, or 'missing' when the dead entry is gone (replayed already).

Why a per-group replay stream and not `bot:outbox` itself: appending to the outbox again would
hand the report a second time to every other group, which already has it. The replay stream is
read by the same relay (same group name) as the outbox; its group is created here at '0' so the
entry cannot be missed. The dead entry is deleted in the same step: replayed exactly once.
]]
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then
  return 'missing'
end
local fields = entry[1][2]
local job_id, report, group = '', '', ''
for i = 1, #fields, 2 do
  if fields[i] == 'job_id' then job_id = fields[i + 1] end
  if fields[i] == 'report' then report = fields[i + 1] end
  if fields[i] == 'group' then group = fields[i + 1] end
end
if group ~= ARGV[2] then
  return redis.error_reply('dead entry ' .. ARGV[1] .. ' belongs to group ' .. group)
end
local made = redis.pcall('XGROUP', 'CREATE', KEYS[2], group, '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return made
end
local new_id = redis.call('XADD', KEYS[2], '*', 'job_id', job_id, 'report', report,
  'group', group, 'replayed_from', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return new_id
