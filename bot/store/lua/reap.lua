--[[ reap.lua: hand one job of a lost owner back to the queue (one atomic, fenced step).

Used by the reaper for the in-flight jobs of an instance whose lease is gone, and by the worker
main process for a job whose pool child died (bot/worker_lost.py).

KEYS[1]  job record hash            bot:job:{job_id}
KEYS[2]  lost owner's in-flight set bot:inflight:{instance_id}
KEYS[3]  fleet counters hash        bot:stats
ARGV[1]  job id
ARGV[2]  lost owner (instance id)
ARGV[3]  fence the caller read      -- the record must still be at this fence
ARGV[4]  now (ms)
ARGV[5]  counter in bot:stats that names the path (reaper_recovered | child_lost_recovered)

Returns one of
  {'stale', state}   the job ended, or runs under another owner: only leaves the lost
                     owner's in-flight set (its id there is left over)
  {'moved'}          same owner but another fence: changed since the caller read it; untouched
  {'queued', recoveries, delivery_tag, message}
                     state 'queued', owner cleared, recoveries + 1: the caller puts the
                     message back (restore_by_tag) or publishes it again from `message`
]]
local job = KEYS[1]
local cur = redis.call('HMGET', job, 'state', 'owner', 'fence', 'delivery_tag', 'message')
local state, owner, fence = cur[1] or '', cur[2] or '', cur[3] or '0'
if state ~= 'running' or owner ~= ARGV[2] then
  redis.call('SREM', KEYS[2], ARGV[1])
  return {'stale', state}
end
if fence ~= ARGV[3] then
  return {'moved'}
end
local recoveries = redis.call('HINCRBY', job, 'recoveries', 1)
redis.call('HSET', job, 'state', 'queued', 'owner', '', 'pid', '',
  'recovered_from', ARGV[2], 'recovered_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'recoveries', 1)
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
return {'queued', recoveries, cur[4] or '', cur[5] or ''}
