#!lua
--[[
  Apply a command (start, pause, kill, done, fail) to a job.

  lua/applyCommands-12.lua applies the same change to many jobs: both move a
  job with lua/includes/transition.lua (tests/test_bulk_commands.py compares
  them).

  Input:
    KEYS[1]  job hash              {kc:s}:job:<id>
    KEYS[2]  history list          {kc:s}:hist:<id>
    KEYS[3]  index of state start  {kc:s}:idx:state:start
    KEYS[4]  index of state pause  {kc:s}:idx:state:pause
    KEYS[5]  index of state kill   {kc:s}:idx:state:kill
    KEYS[6]  index of state done   {kc:s}:idx:state:done
    KEYS[7]  index of state failed {kc:s}:idx:state:failed
    KEYS[8]  heartbeat deadlines   {kc:s}:deadline
    KEYS[9]  retention deadlines   {kc:s}:expiry
    KEYS[10] changes per minute    {kc:s}:changes
    KEYS[11] jobs per worker       {kc:s}:workers:jobs  (field "<state> <worker>")
    KEYS[12] run times             {kc:s}:runtimes      (histogram, lua/includes/runTime.lua)
    KEYS[13] waiting jobs          {kc:s}:idx:waiting   (start, no heartbeat yet)
    KEYS[14] their deadlines       {kc:s}:deadline:waiting

    ARGV[1]  command
    ARGV[2]  actor
    ARGV[3]  reason
    ARGV[4]  expected version ("" to skip the check; If-Match)
    ARGV[5]  history cap
    ARGV[6]  retention of terminal jobs in seconds
    ARGV[7]  event channel (sharded pub/sub)
    ARGV[8]  operation id: random, one per command the service applies, the same
             when the client library retries the call after a lost connection
             ("" or absent: none). The job keeps the ids of its last 4 changes
             (field "ops"), so a retry of a change already made changes nothing.
    ARGV[9]  required owner: "" for a caller who may command any job; else the
             caller's name, which must be the job's owner (a worker token)

  Output (app/store/scripts.py ApplyCommandCode):
    { 1, job hash as a flat array, now }   CHANGED: the state changed (now, or by
                                           this very operation before its reply
                                           was lost); now: the server time in ms
    { 0, job hash as a flat array, now }   UNCHANGED: already in the target state
    { -1 }                            JOB_NOT_FOUND
    { -2 }                            INVALID_COMMAND
    { -3, state, version }            VERSION_MISMATCH: version differs from ARGV[4]
    { -4, state, version }            ILLEGAL_TRANSITION: the job is in a terminal
                                      state (app/model.py outcome(),
                                      the stateMachine include)
    { -8 }                            NOT_OWNER: the caller is not the job's owner
]]
--- @include "serverTime"
--- @include "countChanges"
--- @include "transition"
local rcall = redis.call
local jobKey, histKey = KEYS[1], KEYS[2]
local target = TARGET[ARGV[1]]
local op = ARGV[8] or ""
-- The time goes with every answer that carries the job: "stalled" depends on it.
local nowMs = serverTime()

-- Preconditions, before the first write.
local job = readJob(jobKey)
local id, state, version = job[1], job[2], tonumber(job[3])
if not id then
  return { -1 }
end
local requiredOwner = ARGV[9] or ""
if requiredOwner ~= "" and (job[11] or "") ~= requiredOwner then
  return { -8 }
end
-- A retry of a change already made (other changes may have come since).
if op ~= "" and string.find(" " .. (job[6] or "") .. " ", " " .. op .. " ", 1, true) then
  return { 1, rcall("HGETALL", jobKey), nowMs }
end
if not target then
  return { -2 }
end
if ARGV[4] ~= "" and tonumber(ARGV[4]) ~= version then
  return { -3, state, version }
end
if state == target then
  return { 0, rcall("HGETALL", jobKey), nowMs }
end
if TERMINAL[state] then
  return { -4, state, version }
end

transition({ stateIndex = stateIndexes(3), deadlines = KEYS[8], expiries = KEYS[9],
             workerJobs = KEYS[11], runTimes = KEYS[12], waiting = KEYS[13],
             waitingDeadlines = KEYS[14],
             command = ARGV[1], target = target, actor = ARGV[2], reason = ARGV[3],
             cap = tonumber(ARGV[5]), retention = tonumber(ARGV[6]), channel = ARGV[7],
             op = op }, jobKey, histKey, job, nowMs)
countChanges(KEYS[10], nowMs, 1)
return { 1, rcall("HGETALL", jobKey), nowMs }
