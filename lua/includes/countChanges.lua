--[[
  Changes per minute (GET /v1/stats): add n to this minute's count in the
  hash at key, which keeps the last hour of minutes (older ones are dropped
  when a new minute starts).
]]
local function countChanges(key, nowMs, n)
  local minute = math.floor(nowMs / 60000)
  if redis.call("HINCRBY", key, minute, n) == n then
    redis.call("EXPIRE", key, 3720)
    if redis.call("HLEN", key) > 61 then
      for _, m in ipairs(redis.call("HKEYS", key)) do
        if tonumber(m) < minute - 60 then redis.call("HDEL", key, m) end
      end
    end
  end
end
