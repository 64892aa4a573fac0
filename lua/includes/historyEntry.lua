--[[
  Append one entry to a job's history list and keep its last cap entries.
]]
local function historyEntry(histKey, cap, version, at, command, from, to, actor, reason)
  redis.call("RPUSH", histKey, cjson.encode({
    version = version, at = at, command = command, from = from, to = to,
    actor = actor, reason = reason }))
  redis.call("LTRIM", histKey, -cap, -1)
end
