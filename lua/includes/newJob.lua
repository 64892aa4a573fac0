--[[
  Register a new job in state "start" (version 1): registerJob for a new
  request, rerunJob for an ended job run again. The hash, the indexes (all,
  state start, type, labels, name, waiting), the label counts, the heartbeat
  deadline (and the waiting jobs' one),
  the first history entry, the idempotency record, the change message and
  the count of changes.

  KEYS from first on: job hash, history, all jobs, state start, type,
  heartbeat deadlines, idempotency record, label counts, changes per minute,
  name index, waiting jobs, their deadlines; then the label indexes, to the
  end of KEYS.
]]
--- @include "countChanges"
--- @include "historyEntry"
--- @include "lexicalEntry"

-- Before the first write: the answer of a call that registers nothing (an
-- Idempotency-Key replay { 2, id } or reuse { -6 }; the new id taken, by this
-- very call's earlier attempt { 0, hash }), else nil.
local function newJobAnswered(first, idemTtl, fingerprint)
  if idemTtl > 0 then
    local record = redis.call("GET", KEYS[first + 6])
    if record then
      local sep = string.find(record, " ", 1, true)
      if string.sub(record, sep + 1) ~= fingerprint then
        return { -6 }
      end
      return { 2, string.sub(record, 1, sep - 1) }
    end
  end
  if redis.call("EXISTS", KEYS[first]) == 1 then
    -- Never overwrite: the id was generated for this request, so an existing
    -- job with it is this request's own earlier, successful attempt.
    return { 0, redis.call("HGETALL", KEYS[first]) }
  end
  return nil
end

-- j: id, type, name, labels (JSON), timeout (s), owner, fields (more hash
-- fields, flat), command, actor, reason, cap (history entries), idemTtl,
-- fingerprint, channel. t: TIME's reply; the score is its time in µs, as a
-- string (a Lua number would be formatted with 14 digits).
local function writeNewJob(first, j, nowMs, t)
  local score = t[1] .. string.format("%06d", tonumber(t[2]))
  redis.call("HSET", KEYS[first],
    "id", j.id, "type", j.type, "state", "start", "version", 1,
    "created_at", nowMs, "updated_at", nowMs, "name", j.name, "labels", j.labels,
    "heartbeat_timeout", j.timeout, "score", score, "owner", j.owner, unpack(j.fields))
  -- all, state start, type; waiting (no heartbeat yet); the labels'.
  for i = first + 2, first + 4 do
    redis.call("ZADD", KEYS[i], score, j.id)
  end
  redis.call("ZADD", KEYS[first + 10], score, j.id)
  for i = first + 12, #KEYS do
    redis.call("ZADD", KEYS[i], score, j.id)
  end
  -- GET /v1/jobs?name_prefix= reads the name index; an unnamed job is not in it.
  if j.name ~= "" then
    redis.call("ZADD", KEYS[first + 9], 0, lexicalEntry(j.name, score, j.id))
  end
  if #KEYS >= first + 12 then
    for key, value in pairs(cjson.decode(j.labels)) do
      redis.call("ZINCRBY", KEYS[first + 7], 1, key .. ":" .. value)
    end
  end
  if j.timeout > 0 then
    redis.call("ZADD", KEYS[first + 5], nowMs + j.timeout * 1000, j.id)
    redis.call("ZADD", KEYS[first + 11], nowMs + j.timeout * 1000, j.id)
  end
  historyEntry(KEYS[first + 1], j.cap, 1, nowMs, j.command, "", "start", j.actor, j.reason)
  if j.idemTtl > 0 then
    redis.call("SET", KEYS[first + 6], j.id .. " " .. j.fingerprint, "EX", j.idemTtl)
  end
  redis.call("SPUBLISH", j.channel, j.id .. " 1 start")
  countChanges(KEYS[first + 8], nowMs, 1)
end
