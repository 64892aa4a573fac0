#!lua
--[[
  Import a batch of the Go service's jobs (one shard), keeping their ids.

  A job is created as registerJob would create it (version 1, every index),
  with a history entry "import" in place of "register". Its hash also keeps
  the source's state as read (legacy_state), the version the import left it
  at (import_version) and created_unknown = 1: the Go service did not record
  when a job was created, so created_at is the time of the import.

  Running the same batch again writes nothing. A job imported before whose
  source state has changed since (the Go service still ran) is brought up to
  date, with another "import" entry, as long as nothing has changed it here.

  Input:
    KEYS[1]  index of all jobs     {kc:s}:idx:all
    KEYS[2]  index of state start  {kc:s}:idx:state:start
    KEYS[3]  index of state pause  {kc:s}:idx:state:pause
    KEYS[4]  index of state kill   {kc:s}:idx:state:kill
    KEYS[5]  index of state done   {kc:s}:idx:state:done
    KEYS[6]  index of state failed {kc:s}:idx:state:failed
    KEYS[7]  retention expiries    {kc:s}:expiry
    KEYS[8]  changes per minute    {kc:s}:changes
    KEYS[9]  waiting jobs          {kc:s}:idx:waiting   (start, no heartbeat yet)
    then three per job, in the order of the jobs in ARGV:
      job hash                     {kc:s}:job:<id>
      history list                 {kc:s}:hist:<id>
      index of the job's type      {kc:s}:idx:type:<type>

    ARGV[1]  actor (import)
    ARGV[2]  history cap
    ARGV[3]  retention of finished jobs, in seconds
    ARGV[4]  event channel (sharded pub/sub), told of each job brought up to date
    then four per job:
      id (32 lowercase hex)
      type
      state here: start, pause, kill or failed
      state in the source as read ("" when it had none); the reason of the
      history entry says how it became the state here

  Output: one code per job, in order (app/store/scripts.py ImportLegacyJobsCode):
    { 1 }   IMPORTED: created here
    { 0 }   ALREADY: imported before, and the source's state leads to its state here
            still: nothing written
    { 2 }   ID_TAKEN: a job with this id exists that was not imported: left alone
    { 3 }   CHANGED_HERE: imported before, changed here since: left alone
    { 4 }   UPDATED: imported before; written: its state here follows the source's
            new state (the one code above 1 that writes)
  or, for the whole batch:
    { -9 }  INVALID_ARGUMENTS: keys and arguments do not match, or an id or a
            state is not one (never sent by the service): nothing written
]]
--- @include "serverTime"
--- @include "countChanges"
--- @include "historyEntry"
--- @include "stateMachine"
local rcall = redis.call
local FIXED = 9
local STATE_INDEX = {}  -- KEYS[2..6], in STATES' order
for i, s in ipairs(STATES) do STATE_INDEX[s] = 1 + i end
local actor, cap, retentionMs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000
local channel = ARGV[4]

-- Preconditions, before the first write.
local count = (#ARGV - 4) / 4
if count ~= math.floor(count) or #KEYS ~= FIXED + 3 * count then
  return { -9 }
end
for j = 1, count do
  local a = 4 + (j - 1) * 4
  if not string.match(ARGV[a + 1], "^[0-9a-f]+$") or #ARGV[a + 1] ~= 32 then
    return { -9 }
  end
  local target = ARGV[a + 3]
  if target ~= "start" and target ~= "pause" and target ~= "kill" and target ~= "failed" then
    return { -9 }
  end
end

local function reasonFor(raw, target)
  if raw == target then
    return "imported from the Go service; creation time unknown"
  end
  if raw == "" then
    return "imported from the Go service, where it had no state; creation time unknown"
  end
  return "imported from the Go service, where it had the invalid state '" .. raw
    .. "'; creation time unknown"
end

local nowMs, t = serverTime()
local nowUs = tonumber(t[1]) * 1000000 + tonumber(t[2])
local codes = {}
for j = 1, count do
  local a = 4 + (j - 1) * 4
  local k = FIXED + (j - 1) * 3
  local jobKey, histKey, typeKey = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local id, jobType, target, raw = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local have = rcall("HMGET", jobKey, "state", "legacy_state", "import_version", "version",
    "score", "heartbeat_at")
  if not have[1] then
    -- A score of its own per job of the batch, so the listing order is stable.
    local score = string.format("%.0f", nowUs + j - 1)
    rcall("HSET", jobKey,
      "id", id, "type", jobType, "state", target, "version", 1,
      "created_at", nowMs, "updated_at", nowMs, "name", "", "labels", "{}",
      "heartbeat_timeout", 0, "score", score,
      "owner", "", "legacy_state", raw, "import_version", 1, "created_unknown", 1)
    rcall("ZADD", KEYS[1], score, id)
    rcall("ZADD", KEYS[STATE_INDEX[target]], score, id)
    rcall("ZADD", typeKey, score, id)
    if target == "start" then
      -- No heartbeat yet (and no timeout: it never stalls).
      rcall("ZADD", KEYS[9], score, id)
    end
    if TERMINAL[target] then
      rcall("HSET", jobKey, "ended_at", nowMs)
      rcall("ZADD", KEYS[7], nowMs + retentionMs, id)
    end
    -- No change message: nobody can be waiting on a job that did not exist.
    historyEntry(histKey, cap, 1, nowMs, "import", "", target, actor, reasonFor(raw, target))
    codes[j] = 1
  elseif not have[3] then
    codes[j] = 2
  elseif have[2] == raw then
    codes[j] = 0
  elseif have[4] ~= have[3] then
    codes[j] = 3
  elseif have[1] == target then
    -- Another invalid state in the source, still failed here: nothing to
    -- write (legacy_state keeps the state the job was imported with).
    codes[j] = 0
  else
    local from = have[1]
    local version = tonumber(have[4]) + 1
    rcall("HSET", jobKey, "state", target, "version", version, "updated_at", nowMs,
      "legacy_state", raw, "import_version", version)
    rcall("ZREM", KEYS[STATE_INDEX[from]], id)
    rcall("ZADD", KEYS[STATE_INDEX[target]], have[5], id)
    if target == "start" and not have[6] then
      rcall("ZADD", KEYS[9], have[5], id)
    else
      rcall("ZREM", KEYS[9], id)
    end
    if TERMINAL[target] then
      rcall("HSET", jobKey, "ended_at", nowMs)
      rcall("ZADD", KEYS[7], nowMs + retentionMs, id)
    else
      rcall("HSET", jobKey, "ended_at", "")
      rcall("ZREM", KEYS[7], id)
    end
    historyEntry(histKey, cap, version, nowMs, "import", from, target, actor,
      reasonFor(raw, target))
    rcall("SPUBLISH", channel, id .. " " .. version .. " " .. target)
    codes[j] = 4
  end
end
-- Changes per minute (GET /v1/stats): each job created or brought up to date
-- counts, as in registerJob and applyCommand.
local written = 0
for j = 1, count do
  if codes[j] == 1 or codes[j] == 4 then written = written + 1 end
end
if written > 0 then
  countChanges(KEYS[8], nowMs, written)
end
return codes
