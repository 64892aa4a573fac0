-- Old API: POST /jobState id=<id>&command=pause|start. The first pass over
-- the jobs pauses them, the next resumes them, and so on: every request is a
-- real change of state (the jobs given start in "start").
require "common"

init = load_ids
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function request()
  local id, pass = next_id()
  local command = (pass % 2 == 0) and "pause" or "start"
  return wrk.format("POST", "/jobState", headers, "id=" .. id .. "&command=" .. command)
end
