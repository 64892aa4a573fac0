-- Shared by every benchmark script (loaded with require, LUA_PATH is set by
-- bench/http_load.py): the job ids to cycle over, and a machine-readable
-- summary that wrk prints when it is done.

ids = {}
local position = 0

-- The first script argument is a file of job ids, one per line.
function load_ids(args)
  for line in io.lines(args[1]) do
    ids[#ids + 1] = line
  end
  assert(#ids > 0, "no job ids in " .. args[1])
end

-- The next id, and how many full passes over the ids came before it.
function next_id()
  local index = position % #ids
  local pass = math.floor(position / #ids)
  position = position + 1
  return ids[index + 1], pass
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
