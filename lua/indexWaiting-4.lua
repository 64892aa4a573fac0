#!lua
--[[
  An upgrade of one shard, run once: put the jobs that are waiting for a worker
  (state start, no heartbeat yet) and were registered before the service kept
  {kc:s}:idx:waiting into it, and their heartbeat deadlines into
  {kc:s}:deadline:waiting. The caller sends ids read from the index of state
  start in batches (app/store/migrations.py); each job is checked here, so a
  job that changed since it was read is left to the scripts that keep the
  index (registerJob, applyCommand(s), recordHeartbeats, importLegacyJobs).

  Input:
    KEYS[1]     heartbeat deadlines   {kc:s}:deadline
    KEYS[2]     waiting jobs          {kc:s}:idx:waiting
    KEYS[3]     their deadlines       {kc:s}:deadline:waiting
    KEYS[4]     upgrades done         {kc:s}:migrations   (set)
    KEYS[5..n]  job hashes            {kc:s}:job:<id>

    ARGV[1]     "1": the shard's last batch, record the upgrade as done
    ARGV[2..]   the job ids, in the order of KEYS[5..n]

  Output: { added }   how many jobs were put into the waiting index
]]
local rcall = redis.call
local added = 0
for i = 5, #KEYS do
  local id = ARGV[i - 3]
  local job = rcall("HMGET", KEYS[i], "state", "heartbeat_at", "score")
  if job[1] == "start" and not job[2] then
    added = added + rcall("ZADD", KEYS[2], job[3], id)
    local due = rcall("ZSCORE", KEYS[1], id)
    if due then
      rcall("ZADD", KEYS[3], due, id)
    end
  end
end
if ARGV[1] == "1" then
  rcall("SADD", KEYS[4], "waiting-index")
end
return { added }
