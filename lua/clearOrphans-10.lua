#!lua flags=allow-oom
--[[
  The retention sweep's first step, for due entries of one shard's expiry
  index: clear the index entries of jobs whose hash is gone (evicted, or lost
  with an unreplicated write) and stale expiry entries of jobs that are not
  finished, so the sweep moves past them instead of reading them again for
  ever. Jobs that are there and finished are left to deleteJob.
  Allowed when Redis is out of memory (it only frees memory).

  Input:
    KEYS[1]    retention deadlines    {kc:s}:expiry
    KEYS[2]    index of all jobs      {kc:s}:idx:all
    KEYS[3..7] indexes of the states  {kc:s}:idx:state:start, pause, kill, done, failed
    KEYS[8]    heartbeat deadlines    {kc:s}:deadline
    KEYS[9]    waiting jobs           {kc:s}:idx:waiting
    KEYS[10]   their deadlines        {kc:s}:deadline:waiting
    KEYS[11..10+T]  type indexes      {kc:s}:idx:type:<type>, one per configured type
    then two per job: job hash, history list   {kc:s}:job:<id>, {kc:s}:hist:<id>

    ARGV[1]    T, the number of type indexes
    ARGV[2..]  the job ids, in the order of their keys

  Output: one code per job, in order (app/store/scripts.py ClearOrphansCode):
    { 1 }   CLEARED: the job is gone (its entries in the indexes above and its
            history were removed; label index entries cannot be named without
            the job and stay: listings skip them), or it is not finished (its
            expiry entry was removed)
    { 0 }   PRESENT: a finished job, nothing written: delete it with deleteJob
]]
--- @include "stateMachine"
local rcall = redis.call
local firstJob = 11 + tonumber(ARGV[1])

local codes = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local jobKey = KEYS[firstJob + (i - 2) * 2]
  local state = rcall("HMGET", jobKey, "state")[1]
  if not state then
    for k = 1, firstJob - 1 do
      rcall("ZREM", KEYS[k], id)
    end
    rcall("DEL", KEYS[firstJob + (i - 2) * 2 + 1])
    codes[i - 1] = 1
  elseif not TERMINAL[state] then
    rcall("ZREM", KEYS[1], id)
    codes[i - 1] = 1
  else
    codes[i - 1] = 0
  end
end
return codes
