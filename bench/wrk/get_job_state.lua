-- Old API: GET /jobState?id=<id>, cycling over the preloaded jobs.
require "common"

init = load_ids

function request()
  local id = next_id()
  return wrk.format("GET", "/jobState?id=" .. id)
end
