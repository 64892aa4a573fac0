--[[
  Move one job to the command's target state, as applyCommand does for one
  job and applyCommands for each job of a batch: the hash (state, version,
  updated_at, the ids of its last changes), the state indexes, the heartbeat
  deadline, the retention deadline, a history entry and the change message.
  Checks are the caller's, all made before its first write.

    c: what the call's jobs share: stateIndex (state -> index key), deadlines,
       expiries (keys), command, target, actor, reason, cap (history entries),
       retention (seconds), channel, op (operation id, "" for none)
    job: HMGET of id, state, version, score, heartbeat_timeout, ops
  Returns the job's new version.
]]
--- @include "stateMachine"
--- @include "historyEntry"
local keptOps = 4

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
  if TERMINAL[target] then
    redis.call("HSET", jobKey, "ended_at", nowMs)
    redis.call("ZADD", c.expiries, nowMs + c.retention * 1000, id)
  end

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
