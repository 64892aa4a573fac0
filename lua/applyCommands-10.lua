#!lua
--[[
  Apply one command (start, pause, kill, done, fail) to many jobs of one shard:
  POST /v1/jobs/commands, one call per shard and batch. Each job that matches
  changes exactly as lua/applyCommand-12.lua changes one (same transitions,
  history entry, index moves, deadline, expiry, change message and operation
  id): keep the two alike (tests/test_bulk_commands.py compares them).

  Input:
    KEYS[1]  index of state start  {kc:s}:idx:state:start
    KEYS[2]  index of state pause  {kc:s}:idx:state:pause
    KEYS[3]  index of state kill   {kc:s}:idx:state:kill
    KEYS[4]  index of state done   {kc:s}:idx:state:done
    KEYS[5]  index of state failed {kc:s}:idx:state:failed
    KEYS[6]  heartbeat deadlines   {kc:s}:deadline
    KEYS[7]  retention deadlines   {kc:s}:expiry
    KEYS[8]  changes per minute    {kc:s}:changes
    KEYS[9]  jobs per worker       {kc:s}:workers:jobs  (field "<state> <worker>")
    KEYS[10] run times             {kc:s}:runtimes      (histogram, see recordRunTime)
    KEYS[11 .. 10+L] label indexes of the filter   {kc:s}:idx:label:<sha1>
    KEYS[11+L ..]     per job, two keys: job hash {kc:s}:job:<id>, history {kc:s}:hist:<id>
                     (distinct jobs: a job named twice would change twice)

    ARGV[1]  command
    ARGV[2]  actor
    ARGV[3]  reason
    ARGV[4]  history cap
    ARGV[5]  retention of terminal jobs in seconds
    ARGV[6]  event channel (sharded pub/sub)
    ARGV[7]  operation id, one per batch: a retry of this call after a lost
             reply counts the jobs it changed as changed and changes nothing
    ARGV[8]  filter: state ("" for any)
    ARGV[9]  filter: type ("" for any)
    ARGV[10] filter: stalled ("1" stalled only, "0" not stalled only, "" any)
    ARGV[11] L, the number of label indexes: the job must be in all of them

  Output (app/store/scripts.py ApplyCommandsCode):
    { changed, unchanged, refused, not_found, unmatched }   counts of the jobs:
        changed: moved to the command's state; unchanged: already in it;
        refused: in a terminal state; not_found: no such job; unmatched: the
        job no longer matches the filter (it changed since it was listed)
    { -2 }   INVALID_COMMAND: nothing written
]]
local rcall = redis.call
local stateIndex = { start = KEYS[1], pause = KEYS[2], kill = KEYS[3],
                     done = KEYS[4], failed = KEYS[5] }
local target = ({ start = "start", pause = "pause", kill = "kill",
                  done = "done", fail = "failed" })[ARGV[1]]
local terminal = { kill = true, done = true, failed = true }
local op = ARGV[7]
local keptOps = 4
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
local wantState, wantType, wantStalled = ARGV[8], ARGV[9], ARGV[10]
local labels = tonumber(ARGV[11])
local first = 11 + labels

if not target then
  return { -2 }
end
local t = rcall("TIME")
local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Preconditions for every job, before the first write.
local counts = { 0, 0, 0, 0, 0 }  -- changed, unchanged, refused, not_found, unmatched
local todo = {}
for k = first, #KEYS, 2 do
  local job = rcall("HMGET", KEYS[k], "id", "state", "version", "score", "heartbeat_timeout",
                    "ops", "type", "worker", "started_at", "created_at")
  local id, state = job[1], job[2]
  local outcome
  if not id then
    outcome = 4
  elseif op ~= "" and string.find(" " .. (job[6] or "") .. " ", " " .. op .. " ", 1, true) then
    outcome = 1
  else
    local matches = (wantState == "" or state == wantState)
      and (wantType == "" or job[7] == wantType)
    for i = 11, first - 1 do
      matches = matches and rcall("ZSCORE", KEYS[i], id) ~= false
    end
    if matches and wantStalled ~= "" then
      local due = rcall("ZSCORE", KEYS[6], id)
      local stalled = due ~= false and tonumber(due) < nowMs
      matches = stalled == (wantStalled == "1")
    end
    if not matches then
      outcome = 5
    elseif state == target then
      outcome = 2
    elseif terminal[state] then
      outcome = 3
    else
      outcome = 1
      todo[#todo + 1] = { k, job }
    end
  end
  counts[outcome] = counts[outcome] + 1
end

-- Each change as in applyCommand-12.lua.
for _, entry in ipairs(todo) do
  local jobKey, histKey, job = KEYS[entry[1]], KEYS[entry[1] + 1], entry[2]
  local id, state, version = job[1], job[2], tonumber(job[3]) + 1
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
    rcall("ZADD", KEYS[6], nowMs + timeout * 1000, id)
  else
    rcall("ZREM", KEYS[6], id)
  end
  if terminal[target] then
    rcall("HSET", jobKey, "ended_at", nowMs)
    rcall("ZADD", KEYS[7], nowMs + tonumber(ARGV[5]) * 1000, id)
    recordRunTime(KEYS[10], nowMs, job[7], tonumber(job[9] or job[10]), 0)
  end
  moveWorkerCount(KEYS[9], job[8], state, target)

  rcall("RPUSH", histKey, cjson.encode({
    version = version, at = nowMs, command = ARGV[1], from = state, to = target,
    actor = ARGV[2], reason = ARGV[3] }))
  rcall("LTRIM", histKey, -tonumber(ARGV[4]), -1)
  rcall("SPUBLISH", ARGV[6], id .. " " .. version .. " " .. target)
end

if terminal[target] and #todo > 0 then
  recordRunTime(KEYS[10], nowMs, "", nil, #todo)
end
-- Changes per minute (GET /v1/stats); the same lines in applyCommand-12.lua.
if #todo > 0 then
  local minute = math.floor(nowMs / 60000)
  if rcall("HINCRBY", KEYS[8], minute, #todo) == #todo then
    rcall("EXPIRE", KEYS[8], 3720)
    if rcall("HLEN", KEYS[8]) > 61 then
      for _, m in ipairs(rcall("HKEYS", KEYS[8])) do
        if tonumber(m) < minute - 60 then rcall("HDEL", KEYS[8], m) end
      end
    end
  end
end
return counts
