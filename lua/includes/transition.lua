--[[
  Move one job to the command's target state, as applyCommand does for one
  job and applyCommands for each job of a batch: the hash (state, version,
  updated_at, the ids of its last changes), the state indexes, the heartbeat
  deadline, the retention deadline, the waiting jobs (state start with no
  heartbeat yet) and their deadlines, the counts of its worker by state, on a
  final state the run time, a history entry and the change message.
  Checks are the caller's, all made before its first write.

    c: what the call's jobs share: stateIndex (state -> index key), deadlines,
       expiries, workerJobs, runTimes, waiting, waitingDeadlines (keys), command, target, actor, reason,
       cap (history entries), retention (seconds), channel, op (operation id,
       "" for none)
    job: readJob's answer (HMGET of JOB_FIELDS)
  Returns the job's new version.
]]
--- @include "stateMachine"
--- @include "historyEntry"
--- @include "workerCounts"
--- @include "runTime"
local keptOps = 4
-- What a transition reads of a job; callers read it whole (readJob) and may
-- check the fields after the ones transition uses (type, owner).
local JOB_FIELDS = { "id", "state", "version", "score", "heartbeat_timeout", "ops",
                     "worker", "started_at", "created_at", "type", "owner" }
local function readJob(jobKey)
  return redis.call("HMGET", jobKey, unpack(JOB_FIELDS))
end

local function transition(c, jobKey, histKey, job, nowMs)
  local target = c.target
  local id, state, version = job[1], job[2], tonumber(job[3]) + 1
  redis.call("HSET", jobKey, "state", target, "version", version, "updated_at", nowMs)
  if c.op ~= "" then
    local ops = { c.op }
    for previous in string.gmatch(job[6] or "", "%S+") do
      if #ops == keptOps then break end
      ops[#ops + 1] = previous
    end
    redis.call("HSET", jobKey, "ops", table.concat(ops, " "))
  end
  redis.call("ZREM", c.stateIndex[state], id)
  redis.call("ZADD", c.stateIndex[target], job[4], id)

  local timeout = tonumber(job[5])
  if target == "start" and timeout > 0 then
    -- A resumed job gets a full timeout to report before it counts as stalled.
    redis.call("ZADD", c.deadlines, nowMs + timeout * 1000, id)
  else
    redis.call("ZREM", c.deadlines, id)
  end
  -- Waiting for a worker: in state start and never heard from (started_at is
  -- set with the first heartbeat; heartbeat_at for jobs older than started_at).
  if state == "start" then
    redis.call("ZREM", c.waiting, id)
    redis.call("ZREM", c.waitingDeadlines, id)
  elseif target == "start" and not job[8]
      and redis.call("HEXISTS", jobKey, "heartbeat_at") == 0 then
    redis.call("ZADD", c.waiting, job[4], id)
    if timeout > 0 then
      redis.call("ZADD", c.waitingDeadlines, nowMs + timeout * 1000, id)
    end
  end
  if TERMINAL[target] then
    redis.call("HSET", jobKey, "ended_at", nowMs)
    redis.call("ZADD", c.expiries, nowMs + c.retention * 1000, id)
    -- Run time: from the first heartbeat, or from registration without one.
    recordRunTime(c.runTimes, nowMs, job[10], tonumber(job[8] or job[9]))
  end
  countWorkerJob(c.workerJobs, state, job[7], -1)
  countWorkerJob(c.workerJobs, target, job[7], 1)

  historyEntry(histKey, c.cap, version, nowMs, c.command, state, target, c.actor, c.reason)
  redis.call("SPUBLISH", c.channel, id .. " " .. version .. " " .. target)
  return version
end

-- The index key of each state, from the first of the keys that follow
-- STATES' order (app/store/keys.py state_indexes).
local function stateIndexes(first)
  local indexes = {}
  for i, s in ipairs(STATES) do indexes[s] = KEYS[first + i - 1] end
  return indexes
end
