#!lua flags=allow-oom
--[[
  Delete a job in a terminal state with its history and every index entry.
  Used by DELETE /v1/jobs/{id} and by the retention sweep.
  Allowed when Redis is out of memory (it only frees memory): with
  maxmemory-policy noeviction, the retention sweep is how memory comes back.

  Input:
    KEYS[1]  job hash              {kc:s}:job:<id>
    KEYS[2]  history list          {kc:s}:hist:<id>
    KEYS[3]  index of all jobs     {kc:s}:idx:all
    KEYS[4]  index of state kill   {kc:s}:idx:state:kill
    KEYS[5]  index of state done   {kc:s}:idx:state:done
    KEYS[6]  index of state failed {kc:s}:idx:state:failed
    KEYS[7]  heartbeat deadlines   {kc:s}:deadline
    KEYS[8]  retention deadlines   {kc:s}:expiry
    KEYS[9]  index of the type     {kc:s}:idx:type:<type>
    KEYS[10] index of state start  {kc:s}:idx:state:start
    KEYS[11] index of state pause  {kc:s}:idx:state:pause
    KEYS[12] label counts          {kc:s}:labels
    KEYS[13] name index (lexical)  {kc:s}:idx:name
    KEYS[14] worker index (lexical) {kc:s}:idx:worker
    KEYS[15] jobs per worker       {kc:s}:workers:jobs
    KEYS[16..] label indexes       {kc:s}:idx:label:<sha1 of key=value>

    ARGV[1]  job id
    ARGV[2]  type the caller read (the index keys were built from it)
    ARGV[3]  labels JSON the caller read
    ARGV[4]  "sweep": delete only once the retention has run out; "api": now
    ARGV[5]  event channel (sharded pub/sub)

  Output (app/store/scripts.py DeleteJobCode):
    { 1 }                    DELETED
    { -1 }                   JOB_NOT_FOUND
    { -4, state, version }   ILLEGAL_TRANSITION: the job is not in a terminal state
    { -5 }                   STALE_READ: type or labels differ from ARGV[2..3]
    { -7 }                   NOT_DUE: sweep, and the retention has not run out yet
]]
--- @include "serverTime"
--- @include "stateMachine"
--- @include "lexicalEntry"
--- @include "workerCounts"
local rcall = redis.call
local id = ARGV[1]

-- Preconditions, before the first write.
local job = rcall("HMGET", KEYS[1], "state", "version", "type", "labels", "name", "worker",
                  "score")
if not job[1] then
  return { -1 }
end
if not TERMINAL[job[1]] then
  return { -4, job[1], tonumber(job[2]) }
end
if job[3] ~= ARGV[2] or job[4] ~= ARGV[3] then
  return { -5 }
end
if ARGV[4] == "sweep" then
  local nowMs = serverTime()
  local due = rcall("ZSCORE", KEYS[8], id)
  if not due or tonumber(due) > nowMs then
    return { -7 }
  end
end

rcall("DEL", KEYS[1], KEYS[2])
for i = 3, 11 do
  rcall("ZREM", KEYS[i], id)
end
for i = 16, #KEYS do
  rcall("ZREM", KEYS[i], id)
end
-- The lexical entries (written by registerJob, rerunJob and recordHeartbeats)
-- and the job's place in its worker's counts.
local score = job[7] or ""
if (job[5] or "") ~= "" then
  rcall("ZREM", KEYS[13], lexicalEntry(job[5], score, id))
end
if (job[6] or "") ~= "" then
  rcall("ZREM", KEYS[14], lexicalEntry(job[6], score, id))
  countWorkerJob(KEYS[15], job[1], job[6], -1)
end
if #KEYS >= 16 then
  for key, value in pairs(cjson.decode(ARGV[3])) do
    rcall("ZINCRBY", KEYS[12], -1, key .. ":" .. value)
  end
  rcall("ZREMRANGEBYSCORE", KEYS[12], "-inf", 0)
end
rcall("SPUBLISH", ARGV[5], id .. " 0 deleted")
return { 1 }
