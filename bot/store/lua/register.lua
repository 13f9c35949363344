--[[ register.lua: write a worker's record, take its lease, list it, publish the op schemas.

KEYS[1]  worker record hash     bot:worker:{instance_id}
KEYS[2]  liveness lease         bot:lease:{instance_id}
KEYS[3]  registry zset          bot:workers
KEYS[4]  op schemas hash        bot:ops
ARGV[1]  instance id
ARGV[2]  now (ms)               zset score
ARGV[3]  lease TTL (ms)
ARGV[4]  lease value            (the bot id, for humans reading the keyspace)
ARGV[5]  n: number of record fields
ARGV[6 .. 5+2n]                 record field, value pairs
ARGV[6+2n ..]                   op name, JSON Schema pairs

The record is replaced, not merged, so no field of an earlier registration survives.
Returns 1.
]]
local n = tonumber(ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n))
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if #ARGV > 5 + 2 * n then
  redis.call('HSET', KEYS[4], unpack(ARGV, 6 + 2 * n, #ARGV))
end
return 1
