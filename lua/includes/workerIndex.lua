--[[
  Move a job in the worker index (GET /v1/jobs?worker=) and in the counts per
  worker from the worker of its last heartbeat, old, to worker ("" for none):
  what recordHeartbeats does when a heartbeat names another worker.
]]
--- @include "lexicalEntry"
--- @include "workerCounts"
local function moveWorker(indexKey, countsKey, state, score, id, old, worker)
  if old ~= "" then
    redis.call("ZREM", indexKey, lexicalEntry(old, score, id))
    countWorkerJob(countsKey, state, old, -1)
  end
  if worker ~= "" then
    redis.call("ZADD", indexKey, 0, lexicalEntry(worker, score, id))
    countWorkerJob(countsKey, state, worker, 1)
  end
end
