--[[ acquire.lua: take ownership of a job before its op body runs (one atomic step).

KEYS[1]  job record hash            bot:job:{job_id}
KEYS[2]  new owner's in-flight set  bot:inflight:{instance_id}
KEYS[3]  recorded owner's lease     bot:lease:{owner} (the new owner's own lease when none)
KEYS[4]  fleet counters hash        bot:stats
KEYS[5]  (optional) Celery's result meta key of the job, written with ARGV[16] when taken
ARGV[1]  job id
ARGV[2]  new owner (instance id)
ARGV[3]  owner the caller expects ('' if none)  -- optimistic check: the caller picked KEYS[3]
ARGV[4]  fence the caller expects ('0' if none) -- from these; 'retry' (with what is there) if not
ARGV[5]  now (ms)
ARGV[6]  op name
ARGV[7]  queue
ARGV[8]  delivery tag ('' if unknown)
ARGV[9]  message JSON needed to publish the job again
ARGV[10] pid of the process that will run the op
ARGV[11] '1' when the recorded owner is this instance but its recorded process is dead
ARGV[12] enqueued_at (ms) from the message headers ('' if unknown)
ARGV[13] claim: a token unique to the caller's attempt ('' for none). When the job already
         runs under this owner with this claim, an earlier call of the same attempt went
         through and only its reply was lost (Redis went away): it is answered 'acquired'
         again, with what that call wrote, instead of 'busy'.
ARGV[14] BOT_MAX_RECOVERIES (-1: no bound)
ARGV[15] payload digest of this delivery ('' if unknown): the first one seen (at submit or
         at the first acquire) binds the job id; a delivery with another op or digest is
         another submission reusing the id, and never runs.
ARGV[16] Celery's STARTED result meta (JSON) for KEYS[5] ('' when KEYS[5] is absent)
ARGV[17] seconds that meta lives (BOT_RESULT_TTL; 0: no expiry)

Returns one of
  {'retry', owner, fence, pid}    not the expected owner/fence: call again with these
  {'reused', what}                the id belongs to another op or payload: ack, never run
  {'duplicate', state}            the job already ended: ack without running
  {'busy', owner}                 running under a live owner: ack without running
  {'acquired', fence, attempts, recoveries, enqueued_at, started_at}
  {'exhausted', fence, attempts, recoveries, enqueued_at, started_at}
                                  recovered more than ARGV[14] times: taken (owner, fence) so
                                  that the caller ends it `dead`, but not counted as an attempt
                                  and not to be run: no path runs a job more than
                                  BOT_MAX_RECOVERIES + 1 times
A 'running' job whose owner is gone is taken over and counts one recovery.
]]
-- One read and one write of the record: each redis.call costs the whole fleet's one Redis.
local job = KEYS[1]
local cur = redis.call('HMGET', job, 'state', 'owner', 'fence', 'pid', 'op', 'digest',
  'recoveries', 'attempts', 'enqueued_at', 'claim', 'started_at', 'exhausted')
local state, owner, fence = cur[1] or '', cur[2] or '', cur[3] or '0'
if owner ~= ARGV[3] or fence ~= ARGV[4] then
  return {'retry', owner, fence, cur[4] or ''}
end
if cur[5] and cur[5] ~= '' and cur[5] ~= ARGV[6] then
  redis.call('HINCRBY', KEYS[4], 'id_reused', 1)
  return {'reused', 'the id belongs to a job of another op'}
end
if ARGV[15] ~= '' and cur[6] and cur[6] ~= ARGV[15] then
  redis.call('HINCRBY', KEYS[4], 'id_reused', 1)
  return {'reused', 'the id belongs to a job with another payload'}
end
if state == 'succeeded' or state == 'failed' or state == 'rejected' or state == 'dead' then
  redis.call('HINCRBY', KEYS[4], 'duplicates_skipped', 1)
  return {'duplicate', state}
end
if state == 'running' and owner == ARGV[2] and ARGV[13] ~= '' and cur[10] == ARGV[13] then
  local verdict = cur[12] == '1' and 'exhausted' or 'acquired'
  return {verdict, tonumber(fence), tonumber(cur[8]), tonumber(cur[7]), cur[9] or '', cur[11]}
end
local recoveries = tonumber(cur[7] or '0')
if state == 'running' then
  local owner_alive = redis.call('EXISTS', KEYS[3]) == 1
  local own_dead_process = owner == ARGV[2] and ARGV[11] == '1'
  if owner_alive and not own_dead_process then
    redis.call('HINCRBY', KEYS[4], 'duplicates_skipped', 1)
    return {'busy', owner}
  end
  -- the previous attempt ended without an outcome (its process or worker died)
  recoveries = recoveries + 1
  redis.call('HINCRBY', KEYS[4], 'recoveries', 1)
end
local max_recoveries = tonumber(ARGV[14])
local exhausted = max_recoveries >= 0 and recoveries > max_recoveries
local new_fence = tonumber(fence) + 1
local attempts = tonumber(cur[8] or '0')
if not exhausted then
  attempts = attempts + 1
end
local enqueued = cur[9]
local fields = {'job_id', ARGV[1], 'state', 'running', 'owner', ARGV[2], 'pid', ARGV[10],
  'op', ARGV[6], 'queue', ARGV[7], 'delivery_tag', ARGV[8], 'message', ARGV[9],
  'started_at', ARGV[5], 'updated_at', ARGV[5], 'claim', ARGV[13], 'fence', new_fence,
  'attempts', attempts, 'recoveries', recoveries, 'exhausted', exhausted and '1' or '0'}
if ARGV[15] ~= '' and not cur[6] then
  table.insert(fields, 'digest')
  table.insert(fields, ARGV[15])
end
if ARGV[12] ~= '' and not enqueued then
  enqueued = ARGV[12]
  table.insert(fields, 'enqueued_at')
  table.insert(fields, enqueued)
end
redis.call('HSET', job, unpack(fields))
redis.call('PERSIST', job)
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[5] then
  if tonumber(ARGV[17]) > 0 then
    redis.call('SET', KEYS[5], ARGV[16], 'EX', ARGV[17])
  else
    redis.call('SET', KEYS[5], ARGV[16])
  end
end
return {exhausted and 'exhausted' or 'acquired', new_fence, attempts, recoveries,
  enqueued or '', ARGV[5]}
