#!lua
--[[
  Record heartbeats of one or more jobs of one shard, and answer with each
  job's current state: this is how a worker learns it must pause or stop.
  Heartbeats never change the state or the version.

  It also keeps the worker index (GET /v1/workers, GET /v1/jobs?worker=):
  the job's first heartbeat sets started_at and takes the job out of the
  waiting jobs (state start, no heartbeat yet) and their deadlines; a heartbeat naming another
  worker than the job's last one moves the job between the workers' entries
  in {kc:s}:idx:worker and their counts by state; every recorded heartbeat
  with a worker sets that worker's last heartbeat in {kc:s}:workers (one ZADD
  per distinct worker of the call).

  Input:
    KEYS[1]     heartbeat deadlines   {kc:s}:deadline
    KEYS[2]     worker index (lexical) {kc:s}:idx:worker   members "<worker>\0<score, 20 digits><id>"
    KEYS[3]     workers                {kc:s}:workers      member worker, score last heartbeat (ms)
    KEYS[4]     jobs per worker        {kc:s}:workers:jobs field "<state> <worker>", value count
    KEYS[5]     waiting jobs           {kc:s}:idx:waiting  start, no heartbeat yet
    KEYS[6]     their deadlines        {kc:s}:deadline:waiting
    KEYS[7..n]  job hashes             {kc:s}:job:<id>

    ARGV[1]     required owner: "" for a caller who may heartbeat any job; else the
                caller's name, which must be each job's owner (a worker token)
    then ARGV, five per job, in the order of KEYS[7..n]:
      mask            which of the next four were sent: 1 worker, 2 progress,
                      4 message, 8 observed_state
      worker, progress, message, observed_state   ("" when not sent)

  Output: one entry per job, in the order of KEYS[7..n]
  (app/store/scripts.py RecordHeartbeatsCode):
    { state, version, observed_state, heartbeat_timeout }   recorded
    { -1 }                                                   JOB_NOT_FOUND
    { -8 }                                                   NOT_OWNER: that job is
                                                             not written
  Jobs in a terminal state are answered but not updated, with one exception:
  a killed job records observed_state "kill", the worker's acknowledgement
  that it has stopped (so a reader can tell "kill requested" from "stopped").
]]
--- @include "serverTime"
--- @include "workerIndex"
local rcall = redis.call
local fields = { "worker", "progress", "message", "observed_state" }
local bits = { 1, 2, 4, 8 }
local requiredOwner = ARGV[1]
local first = 7
-- A job's id is the end of its key, "<tag>:job:<id>", whose tag is the one of
-- KEYS[1], "<tag>:deadline": the hash's own id field need not be read.
local idStart = #KEYS[1] - #":deadline" + #":job:" + 1

-- Preconditions for every job, before the first write.
local jobs = {}
for i = first, #KEYS do
  jobs[i] = rcall("HMGET", KEYS[i], "state", "version", "observed_state", "heartbeat_timeout",
                  "worker", "score", "started_at", requiredOwner == "" and "state" or "owner")
end

local nowMs = serverTime()
local answers = {}
local seen = {}  -- workers whose last heartbeat this call has set
for i = first, #KEYS do
  local job = jobs[i]
  local state = job[1]
  if not state then
    answers[i - first + 1] = { -1 }
  elseif requiredOwner ~= "" and (job[8] or "") ~= requiredOwner then
    answers[i - first + 1] = { -8 }
  else
    local observed, timeout = job[3] or "", tonumber(job[4])
    local base = 1 + (i - first) * 5
    local mask = tonumber(ARGV[base + 1])
    if state == "start" or state == "pause" then
      local id = string.sub(KEYS[i], idStart)
      if mask == 15 then
        -- Every field sent (the usual heartbeat): one HSET, no table to build.
        rcall("HSET", KEYS[i], "heartbeat_at", nowMs, "worker", ARGV[base + 2],
              "progress", ARGV[base + 3], "message", ARGV[base + 4],
              "observed_state", ARGV[base + 5])
        observed = ARGV[base + 5]
      else
        local update = { "heartbeat_at", nowMs }
        for f = 1, 4 do
          if math.floor(mask / bits[f]) % 2 == 1 then
            update[#update + 1] = fields[f]
            update[#update + 1] = ARGV[base + 1 + f]
            if f == 4 then observed = ARGV[base + 5] end
          end
        end
        rcall("HSET", KEYS[i], unpack(update))
      end
      if not job[7] then
        rcall("HSET", KEYS[i], "started_at", nowMs)
        rcall("ZREM", KEYS[5], id)
        rcall("ZREM", KEYS[6], id)
      end
      if state == "start" and timeout > 0 then
        rcall("ZADD", KEYS[1], nowMs + timeout * 1000, id)
      end
      -- The worker index: move the job when the worker's name changes.
      local old = job[5] or ""
      local worker = old
      if mask % 2 == 1 then worker = ARGV[base + 2] end
      if worker ~= old then
        moveWorker(KEYS[2], KEYS[4], state, job[6], id, old, worker)
      end
      if worker ~= "" and not seen[worker] then
        seen[worker] = true
        rcall("ZADD", KEYS[3], nowMs, worker)
      end
    elseif state == "kill" and math.floor(mask / 8) % 2 == 1 and ARGV[base + 5] == "kill" then
      rcall("HSET", KEYS[i], "observed_state", "kill")
      observed = "kill"
    end
    answers[i - first + 1] = { state, tonumber(job[2]), observed, timeout }
  end
end
return answers
