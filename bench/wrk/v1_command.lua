-- JSON API: POST /v1/jobs/<id>/commands {"command": "pause"|"start"}; passes
-- alternate as in post_job_state.lua, so every request changes a state.
require "common"

init = load_ids
local headers = { ["Content-Type"] = "application/json" }

function request()
  local id, pass = next_id()
  local command = (pass % 2 == 0) and "pause" or "start"
  return wrk.format("POST", "/v1/jobs/" .. id .. "/commands", headers,
                    '{"command": "' .. command .. '", "reason": "benchmark"}')
end
