--[[
  The Redis server time in ms, and TIME's reply for finer units: every host
  that reads a job then agrees on the clock (whether it is stalled).
]]
local function serverTime()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end
