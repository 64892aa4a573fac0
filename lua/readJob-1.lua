#!lua flags=no-writes
--[[
  Read a job together with the server time, in one round trip: readers on
  several hosts then agree on whether a job is stalled.

  Input:
    KEYS[1]  job hash   {kc:s}:job:<id>

  Output:
    { now in ms, job hash as a flat array (empty when there is no such job) }
]]
--- @include "serverTime"
local nowMs = serverTime()
return { nowMs, redis.call("HGETALL", KEYS[1]) }
