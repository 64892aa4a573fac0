#!lua flags=no-writes
--[[
  Read a job together with the server time, in one round trip: readers on
  several hosts then agree on whether a job is stalled.

  Input:
    KEYS[1]  job hash   {kc:s}:job:<id>

  Output:
    { now in ms, job hash as a flat array (empty when there is no such job) }
]]
local t = redis.call("TIME")
return { tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
         redis.call("HGETALL", KEYS[1]) }
