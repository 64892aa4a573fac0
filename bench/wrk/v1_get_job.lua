-- JSON API: GET /v1/jobs/<id>, cycling over the preloaded jobs.
require "common"

init = load_ids

function request()
  local id = next_id()
  return wrk.format("GET", "/v1/jobs/" .. id)
end
