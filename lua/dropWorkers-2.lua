#!lua flags=allow-oom
--[[
  Forget the workers of one shard that have sent no heartbeat since a cutoff
  (the retention sweep, once a minute): GET /v1/workers lists them no more.
  Allowed when Redis is out of memory (it only frees memory).

  Their jobs keep their "worker" field and their entries in the worker index,
  which deleteJob removes with the job; the counts of a dropped worker go with
  it (a job still counted is one silent for the whole retention period).

  Input:
    KEYS[1]  workers               {kc:s}:workers      member worker, score last heartbeat (ms)
    KEYS[2]  jobs per worker       {kc:s}:workers:jobs field "<state> <worker>"

    ARGV[1]  cutoff (ms): workers whose last heartbeat is older are dropped
    ARGV[2]  at most this many workers per call

  Output (app/store/scripts.py DropWorkersCode):
    { 1, dropped }   DROPPED: the number of workers dropped (0: none was due)
]]
--- @include "stateMachine"
local rcall = redis.call
local due = rcall("ZRANGEBYSCORE", KEYS[1], "-inf", "(" .. ARGV[1], "LIMIT", 0,
                  tonumber(ARGV[2]))
for _, worker in ipairs(due) do
  rcall("ZREM", KEYS[1], worker)
  for _, state in ipairs(STATES) do
    rcall("HDEL", KEYS[2], state .. " " .. worker)
  end
end
return { 1, #due }
