--[[
  Run times of finished jobs (GET /v1/stats "run_times"): key is a histogram
  per minute and type, field "<minute> <bucket> <type>", bucket
  floor(4 * log2(ms)), so four buckets per doubling (about 19 % wide); field
  "<minute>" counts the minute's finishes. Its first finish deletes the fields
  older than an hour, so the hash holds at most 61 minutes of buckets.
  startedMs: the first heartbeat, or the registration without one.
]]
local function recordRunTime(key, nowMs, jobType, startedMs)
  local minute = math.floor(nowMs / 60000)
  if startedMs then
    local ran = math.max(nowMs - startedMs, 1)
    local bucket = math.floor(4 * math.log(ran) / math.log(2))
    redis.call("HINCRBY", key, minute .. " " .. bucket .. " " .. jobType, 1)
  end
  if redis.call("HINCRBY", key, minute, 1) == 1 then
    redis.call("EXPIRE", key, 3720)
    for _, f in ipairs(redis.call("HKEYS", key)) do
      if tonumber(string.match(f, "^%d+")) < minute - 60 then redis.call("HDEL", key, f) end
    end
  end
end
