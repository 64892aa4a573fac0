#!lua
--[[
  Apply one command (start, pause, kill, done, fail) to many jobs of one shard:
  POST /v1/jobs/commands, one call per shard and batch. Each job that matches
  changes exactly as lua/applyCommand-14.lua changes one: both move a job with
  lua/includes/transition.lua (tests/test_bulk_commands.py compares them).

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
    KEYS[10] run times             {kc:s}:runtimes      (histogram, lua/includes/runTime.lua)
    KEYS[11] waiting jobs          {kc:s}:idx:waiting   (start, no heartbeat yet)
    KEYS[12] their deadlines       {kc:s}:deadline:waiting
    KEYS[13 .. 12+L] label indexes of the filter   {kc:s}:idx:label:<sha1>
    KEYS[13+L ..]     per job, two keys: job hash {kc:s}:job:<id>, history {kc:s}:hist:<id>
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
    ARGV[12] filter: started, whether the job has had a heartbeat ("1" yes,
             "0" no, "" or absent: any)

  Output (app/store/scripts.py ApplyCommandsCode):
    { changed, unchanged, refused, not_found, unmatched }   counts of the jobs:
        changed: moved to the command's state; unchanged: already in it;
        refused: in a terminal state; not_found: no such job; unmatched: the
        job no longer matches the filter (it changed since it was listed)
    { -2 }   INVALID_COMMAND: nothing written
]]
--- @include "serverTime"
--- @include "countChanges"
--- @include "transition"
local rcall = redis.call
local target = TARGET[ARGV[1]]
local op = ARGV[7]
local wantState, wantType, wantStalled = ARGV[8], ARGV[9], ARGV[10]
local wantStarted = ARGV[12] or ""
local labels = tonumber(ARGV[11])
local first = 13 + labels

if not target then
  return { -2 }
end
local nowMs = serverTime()

-- Preconditions for every job, before the first write.
local counts = { 0, 0, 0, 0, 0 }  -- changed, unchanged, refused, not_found, unmatched
local todo = {}
for k = first, #KEYS, 2 do
  local job = readJob(KEYS[k])
  local id, state = job[1], job[2]
  local outcome
  if not id then
    outcome = 4
  elseif op ~= "" and string.find(" " .. (job[6] or "") .. " ", " " .. op .. " ", 1, true) then
    outcome = 1
  else
    local matches = (wantState == "" or state == wantState)
      and (wantType == "" or job[10] == wantType)
    for i = 13, first - 1 do
      matches = matches and rcall("ZSCORE", KEYS[i], id) ~= false
    end
    if matches and wantStalled ~= "" then
      local due = rcall("ZSCORE", KEYS[6], id)
      local stalled = due ~= false and tonumber(due) < nowMs
      matches = stalled == (wantStalled == "1")
    end
    if matches and wantStarted ~= "" then
      -- started_at since the first heartbeat; heartbeat_at alone before it existed.
      local started = job[8] ~= false or rcall("HEXISTS", KEYS[k], "heartbeat_at") == 1
      matches = started == (wantStarted == "1")
    end
    if not matches then
      outcome = 5
    elseif state == target then
      outcome = 2
    elseif TERMINAL[state] then
      outcome = 3
    else
      outcome = 1
      todo[#todo + 1] = { k, job }
    end
  end
  counts[outcome] = counts[outcome] + 1
end

-- Each change as in applyCommand-14.lua.
local c = { stateIndex = stateIndexes(1), deadlines = KEYS[6], expiries = KEYS[7],
            workerJobs = KEYS[9], runTimes = KEYS[10], waiting = KEYS[11],
            waitingDeadlines = KEYS[12],
            command = ARGV[1], target = target, actor = ARGV[2], reason = ARGV[3],
            cap = tonumber(ARGV[4]), retention = tonumber(ARGV[5]), channel = ARGV[6], op = op }
for _, entry in ipairs(todo) do
  transition(c, KEYS[entry[1]], KEYS[entry[1] + 1], entry[2], nowMs)
end
if #todo > 0 then
  countChanges(KEYS[8], nowMs, #todo)
end
return counts
