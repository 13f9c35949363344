--[[ heartbeat.lua: one heartbeat in one round trip, whatever the number of jobs in flight.

KEYS[1]  worker record hash     bot:worker:{instance_id}
KEYS[2]  liveness lease         bot:lease:{instance_id}
KEYS[3]  registry zset          bot:workers
KEYS[4]  kombu's unacked index  unacked_index (global_keyprefix / unacked_index_key honoured)
ARGV[1]  instance id
ARGV[2]  now (ms)               zset score, record's last_heartbeat
ARGV[3]  lease TTL (ms)
ARGV[4]  lease value
ARGV[5]  now (epoch seconds, float as text): the unacked_index score, as kombu writes it
ARGV[6]  n: number of record fields
ARGV[7 .. 6+2n]                 record field, value pairs (the changing ones)
ARGV[7+2n ..]                   delivery tags this worker holds (reserved and running)

The record must exist: when it does not (deleted by a reaper after a long partition, or a
Redis that lost data), nothing is written and the caller registers again in full.
Tags are renewed with ZADD XX: a tag acked a moment ago is not re-created as an orphan index
entry. Tags go in chunks of 512 (Lua's unpack limit), so up to 512 tags is one ZADD.

Returns {'missing'} or {'ok', lease_existed (0|1), tags renewed}.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local n = tonumber(ARGV[6])
local lease_existed = redis.call('EXISTS', KEYS[2])
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[2], unpack(ARGV, 7, 6 + 2 * n))
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
local renewed = 0
local first = 7 + 2 * n
local chunk = 512
while first <= #ARGV do
  local last = math.min(first + chunk - 1, #ARGV)
  local args = {}
  for i = first, last do
    args[#args + 1] = ARGV[5]
    args[#args + 1] = ARGV[i]
  end
  -- CH counts changed scores: with XX that is exactly the tags still present.
  renewed = renewed + redis.call('ZADD', KEYS[4], 'XX', 'CH', unpack(args))
  first = last + 1
end
return {'ok', lease_existed, renewed}
