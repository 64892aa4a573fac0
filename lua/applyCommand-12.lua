#!lua
--[[
  Apply a command (start, pause, kill, done, fail) to a job.

  lua/applyCommands-10.lua applies the same change to many jobs: keep the two
  alike (tests/test_bulk_commands.py compares them).

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
    KEYS[12] run times             {kc:s}:runtimes      (histogram, see recordRunTime)

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
                                      state (app/model.py outcome())
    { -8 }                            NOT_OWNER: the caller is not the job's owner
]]
local rcall = redis.call
local jobKey, histKey = KEYS[1], KEYS[2]
local stateIndex = { start = KEYS[3], pause = KEYS[4], kill = KEYS[5],
                     done = KEYS[6], failed = KEYS[7] }
local target = ({ start = "start", pause = "pause", kill = "kill",
                  done = "done", fail = "failed" })[ARGV[1]]
local terminal = { kill = true, done = true, failed = true }
local op = ARGV[8] or ""
-- Jobs per worker by state (GET /v1/workers), kept with recordHeartbeats-4.lua:
-- a job that names a worker moves between that worker's counts.
local function moveWorkerCount(key, worker, from, to)
  if not worker or worker == "" then return end
  if rcall("HINCRBY", key, from .. " " .. worker, -1) <= 0 then
    rcall("HDEL", key, from .. " " .. worker)
  end
  rcall("HINCRBY", key, to .. " " .. worker, 1)
end
-- Run times of finished jobs (GET /v1/stats "run_times"), the same block in
-- applyCommand-12.lua and applyCommands-10.lua. {kc:s}:runtimes is a histogram per
-- minute and type: field "<minute> <bucket> <type>", bucket floor(4 * log2(ms)),
-- so four buckets per doubling (about 19 % wide); field "<minute>" counts the
-- minute's finishes. Its first finish deletes the fields older than an hour,
-- so the hash holds at most 61 minutes of buckets.
local function recordRunTime(key, nowMs, jobType, startedMs, finishes)
  local minute = math.floor(nowMs / 60000)
  if startedMs then
    local ran = math.max(nowMs - startedMs, 1)
    local bucket = math.floor(4 * math.log(ran) / math.log(2))
    rcall("HINCRBY", key, minute .. " " .. bucket .. " " .. jobType, 1)
  end
  if finishes > 0 and rcall("HINCRBY", key, minute, finishes) == finishes then
    rcall("EXPIRE", key, 3720)
    for _, f in ipairs(rcall("HKEYS", key)) do
      if tonumber(string.match(f, "^%d+")) < minute - 60 then rcall("HDEL", key, f) end
    end
  end
end
local keptOps = 4
-- The time goes with every answer that carries the job: "stalled" depends on it.
local t = rcall("TIME")
local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Preconditions, before the first write.
local job = rcall("HMGET", jobKey, "id", "state", "version", "score", "heartbeat_timeout",
                  "ops", "owner", "worker", "started_at", "created_at", "type")
local id, state, version = job[1], job[2], tonumber(job[3])
if not id then
  return { -1 }
end
local requiredOwner = ARGV[9] or ""
if requiredOwner ~= "" and (job[7] or "") ~= requiredOwner then
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
if terminal[state] then
  return { -4, state, version }
end

version = version + 1
rcall("HSET", jobKey, "state", target, "version", version, "updated_at", nowMs)
if op ~= "" then
  local ops = { op }
  for previous in string.gmatch(job[6] or "", "%S+") do
    if #ops == keptOps then break end
    ops[#ops + 1] = previous
  end
  rcall("HSET", jobKey, "ops", table.concat(ops, " "))
end
rcall("ZREM", stateIndex[state], id)
rcall("ZADD", stateIndex[target], job[4], id)

local timeout = tonumber(job[5])
if target == "start" and timeout > 0 then
  -- A resumed job gets a full timeout to report before it counts as stalled.
  rcall("ZADD", KEYS[8], nowMs + timeout * 1000, id)
else
  rcall("ZREM", KEYS[8], id)
end
if terminal[target] then
  rcall("HSET", jobKey, "ended_at", nowMs)
  rcall("ZADD", KEYS[9], nowMs + tonumber(ARGV[6]) * 1000, id)
  -- Run time: from the first heartbeat, or from registration without one.
  recordRunTime(KEYS[12], nowMs, job[11], tonumber(job[9] or job[10]), 1)
end
moveWorkerCount(KEYS[11], job[8], state, target)

rcall("RPUSH", histKey, cjson.encode({
  version = version, at = nowMs, command = ARGV[1], from = state, to = target,
  actor = ARGV[2], reason = ARGV[3] }))
rcall("LTRIM", histKey, -tonumber(ARGV[5]), -1)
rcall("SPUBLISH", ARGV[7], id .. " " .. version .. " " .. target)
-- Changes per minute (GET /v1/stats); the same lines in registerJob.
local minute = math.floor(nowMs / 60000)
if rcall("HINCRBY", KEYS[10], minute, 1) == 1 then
  rcall("EXPIRE", KEYS[10], 3720)
  if rcall("HLEN", KEYS[10]) > 61 then
    for _, m in ipairs(rcall("HKEYS", KEYS[10])) do
      if tonumber(m) < minute - 60 then rcall("HDEL", KEYS[10], m) end
    end
  end
end
return { 1, rcall("HGETALL", jobKey), nowMs }
