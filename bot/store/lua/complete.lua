--[[ complete.lua: record an attempt's outcome, fenced; a final one with its report (atomic).

KEYS[1]  job record hash            bot:job:{job_id}
KEYS[2]  owner's in-flight set      bot:inflight:{instance_id}
KEYS[3]  outbox stream              bot:outbox
KEYS[4]  fleet counters hash        bot:stats
KEYS[5]  owner's metrics hash       bot:metrics:{instance_id}
KEYS[6]  (optional) Celery's result meta key of the job: for a final state, ARGV[11] is SET
         there and PUBLISHed on it (what Celery's Redis backend does; it wakes AsyncResult.get)
ARGV[1]  job id
ARGV[2]  owner (instance id)
ARGV[3]  fence the owner acquired with
ARGV[4]  new state: succeeded | failed | rejected | dead | retrying
ARGV[5]  outcome JSON (result or error)
ARGV[6]  report JSON for a final state, '' for retrying
ARGV[7]  now (ms)
ARGV[8]  seconds the record lives after a final state (BOT_JOB_TTL)
ARGV[9]  metrics field that sums attempt durations (ms)
ARGV[10] this attempt's duration (ms)
ARGV[11] Celery's result meta (JSON) for KEYS[6] ('' when KEYS[6] is absent)
ARGV[12] seconds that meta lives (BOT_RESULT_TTL; 0: no expiry)
ARGV[13] the record's running-only fields, space-separated (bot/jobs/record.py,
         RUNNING_ONLY_FIELDS): a final state drops them in this same step and writes the rest
         of the hash anew, so it is stored compactly (a hash converted to a hashtable by one
         long value never converts back by itself)
ARGV[14..] metrics fields to count one each (outcome by op, duration bucket by op)

Returns {1, outbox entry id ('' when not final)} or {0} when the fence or owner no longer
match: the job was recovered elsewhere, this outcome is discarded and counted as lease_lost.
Idempotent: the same owner, fence and state again (a retry after a lost reply) returns what
the first call wrote and writes nothing.
]]
-- A finished job keeps only what its readers need: everything but the fields named in `names`.
local function keep_finished(job, names)
  local running_only = {}
  for name in string.gmatch(names, '%S+') do
    running_only[name] = true
  end
  local all = redis.call('HGETALL', job)
  local kept = {}
  for i = 1, #all, 2 do
    if not running_only[all[i]] then
      kept[#kept + 1] = all[i]
      kept[#kept + 1] = all[i + 1]
    end
  end
  redis.call('DEL', job)
  redis.call('HSET', job, unpack(kept))
end

local job = KEYS[1]
local cur = redis.call('HMGET', job, 'owner', 'fence', 'state', 'report_id')
if cur[1] == ARGV[2] and cur[2] == ARGV[3] and cur[3] == ARGV[4] then
  -- this very outcome is recorded already: the caller retries after the reply was lost
  return {1, cur[4] or ''}
end
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] or cur[3] ~= 'running' then
  redis.call('HINCRBY', KEYS[4], 'lease_lost', 1)
  return {0}
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[9], tonumber(ARGV[10]))
for i = 14, #ARGV do
  redis.call('HINCRBY', KEYS[5], ARGV[i], 1)
end
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[8]))
if ARGV[6] == '' then
  redis.call('HSET', job, 'state', ARGV[4], 'outcome', ARGV[5], 'updated_at', ARGV[7])
  return {1, ''}
end
local entry = redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1], 'report', ARGV[6])
redis.call('HSET', job, 'state', ARGV[4], 'outcome', ARGV[5], 'updated_at', ARGV[7],
  'finished_at', ARGV[7], 'report_id', entry)
keep_finished(job, ARGV[13])
redis.call('EXPIRE', job, tonumber(ARGV[8]))
if KEYS[6] then
  if tonumber(ARGV[12]) > 0 then
    redis.call('SET', KEYS[6], ARGV[11], 'EX', ARGV[12])
  else
    redis.call('SET', KEYS[6], ARGV[11])
  end
  redis.call('PUBLISH', KEYS[6], ARGV[11])
end
return {1, entry}
