--[[
  Jobs per worker by state (GET /v1/workers): field "<state> <worker>" of the
  hash at key counts the shard's jobs in that state whose last heartbeat named
  the worker. recordHeartbeats adds a job to its worker, transition moves it
  between states, deleteJob takes it off. A field that falls to 0 is deleted.
]]
local function countWorkerJob(key, state, worker, delta)
  if not worker or worker == "" then return end
  local field = state .. " " .. worker
  if redis.call("HINCRBY", key, field, delta) <= 0 then
    redis.call("HDEL", key, field)
  end
end
