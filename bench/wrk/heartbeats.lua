-- JSON API: POST /v1/heartbeats with a batch of jobs per request, as one
-- worker host running many jobs sends it. The second script argument is the
-- batch size; batches cycle over the preloaded jobs.
require "common"

local bodies = {}
local next_body = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  load_ids(args)
  local size = tonumber(args[2])
  for first = 1, #ids - size + 1, size do
    local items = {}
    for i = first, first + size - 1 do
      items[#items + 1] = string.format(
        '{"id": "%s", "progress": %d, "message": "step %d", "worker": "bench-host", '
        .. '"observed_state": "start"}', ids[i], i % 100, i)
    end
    bodies[#bodies + 1] = '{"heartbeats": [' .. table.concat(items, ", ") .. ']}'
  end
  assert(#bodies > 0, "fewer job ids than one batch")
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/v1/heartbeats", headers, bodies[next_body])
end
