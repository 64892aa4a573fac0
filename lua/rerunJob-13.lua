#!lua
--[[
  Run an ended job again (POST /v1/jobs/{id}/rerun): register a new job in
  state "start" (version 1) with the old job's type, name, labels and heartbeat
  timeout, "retry_of" the old id, and append the new id to the old job's
  "reruns". The new id has the old job's shard (its first hex digit), so both
  jobs and every index entry are in one slot.

  The registration is the one of registerJob-12.lua (same fields, indexes,
  history entry, change notice and counters): both write the job with
  lua/includes/newJob.lua.

  Input:
    KEYS[1]  old job hash          {kc:s}:job:<old id>
    KEYS[2]  new job hash          {kc:s}:job:<new id>
    KEYS[3]  new job's history     {kc:s}:hist:<new id>
    KEYS[4]  index of all jobs     {kc:s}:idx:all
    KEYS[5]  index of state start  {kc:s}:idx:state:start
    KEYS[6]  index of the type     {kc:s}:idx:type:<type>
    KEYS[7]  heartbeat deadlines   {kc:s}:deadline
    KEYS[8]  idempotency record    {kc:s}:idem:<sha1 of actor, old id, key>
                                   (read only when ARGV[6] > 0)
    KEYS[9]  label counts          {kc:s}:labels
    KEYS[10] changes per minute    {kc:s}:changes
    KEYS[11] name index (lexical)  {kc:s}:idx:name
    KEYS[12] waiting jobs          {kc:s}:idx:waiting   (start, no heartbeat yet)
    KEYS[13] their deadlines       {kc:s}:deadline:waiting
    KEYS[14..] label indexes       {kc:s}:idx:label:<sha1 of key=value>

    ARGV[1]  new job id (32 lowercase hex, same first digit as the old one)
    ARGV[2]  type the caller read (the type index key was built from it)
    ARGV[3]  labels JSON the caller read (the label index keys were built from it)
    ARGV[4]  actor
    ARGV[5]  history cap
    ARGV[6]  idempotency record TTL in seconds (0: no Idempotency-Key)
    ARGV[7]  request fingerprint stored with the idempotency record
    ARGV[8]  event channel (sharded pub/sub)
    ARGV[9]  owner of the new job: the caller's worker token name ("" for none)
    ARGV[10] reruns kept in the old job's "reruns" (the newest)

  Output (app/store/scripts.py RerunJobCode):
    { 1, nowMs, name, heartbeat_timeout }  CREATED
    { 0, job hash as a flat array }   EXISTS: a job with the new id exists (a retry
                                      of this very call): nothing was written
    { 2, id }                         REPLAY: Idempotency-Key replay, the id of the
                                      job made by the first request; nothing written
    { -1 }                            JOB_NOT_FOUND: no old job
    { -4, state, version }            ILLEGAL_TRANSITION: the old job has not ended
    { -5 }                            STALE_READ: type or labels differ from ARGV[2..3]
    { -6 }                            IDEMPOTENCY_KEY_REUSED with another request
]]
--- @include "serverTime"
--- @include "stateMachine"
--- @include "newJob"
local rcall = redis.call
local oldKey = KEYS[1]

-- Preconditions, before the first write.
local answered = newJobAnswered(2, tonumber(ARGV[6]), ARGV[7])
if answered then
  return answered
end
local old = rcall("HMGET", oldKey, "id", "state", "version", "type", "labels", "name",
                  "heartbeat_timeout", "reruns")
if not old[1] then
  return { -1 }
end
if not TERMINAL[old[2]] then
  return { -4, old[2], tonumber(old[3]) }
end
if old[4] ~= ARGV[2] or old[5] ~= ARGV[3] then
  return { -5 }
end

local nowMs, t = serverTime()
local id, name, timeout = ARGV[1], old[6] or "", tonumber(old[7] or 0)
writeNewJob(2, { id = id, type = old[4], name = name, labels = old[5], timeout = timeout,
                 owner = ARGV[9], fields = { "retry_of", old[1] }, command = "rerun",
                 actor = ARGV[4], reason = "rerun of " .. old[1], cap = tonumber(ARGV[5]),
                 idemTtl = tonumber(ARGV[6]), fingerprint = ARGV[7], channel = ARGV[8] },
            nowMs, t)

-- The old job names its reruns, oldest first, the newest ARGV[10] of them.
local reruns = {}
for previous in string.gmatch(old[8] or "", "%S+") do
  reruns[#reruns + 1] = previous
end
reruns[#reruns + 1] = id
local kept = tonumber(ARGV[10])
if #reruns > kept then
  reruns = { unpack(reruns, #reruns - kept + 1) }
end
rcall("HSET", oldKey, "reruns", table.concat(reruns, " "))
return { 1, nowMs, name, timeout }
