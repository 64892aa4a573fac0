#!lua
--[[
  Delete one of the Go service's job hashes after its import
  (import-legacy --delete-source), unless it changed since it was read: a
  Go service still running may have written a new state meanwhile.

  Input:
    KEYS[1]  the Go service's job hash   job:<id>

    ARGV[1]  type as read ("" when it had none)
    ARGV[2]  state as read ("" when it had none)

  Output: an integer, not a table (app/store/scripts.py DeleteLegacyJobCode):
    1   DELETED
    0   CHANGED: changed since it was read (or gone), left alone
]]
local key = KEYS[1]
-- pcall: a key that is no longer a hash is "changed", not an error.
local flat = redis.pcall("HGETALL", key)
if flat.err or #flat == 0 or #flat > 4 then
  return 0
end
local have = { type = "", state = "" }
for i = 1, #flat, 2 do
  if have[flat[i]] == nil then
    return 0
  end
  have[flat[i]] = flat[i + 1]
end
if have.type ~= ARGV[1] or have.state ~= ARGV[2] then
  return 0
end
redis.call("DEL", key)
return 1
