-- JSON API: POST /v1/jobs; every request registers a new job.
require "common"

wrk.method = "POST"
wrk.path = "/v1/jobs"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"type": "teams", "name": "benchmark job", "labels": {"team": "bench"}, '
  .. '"heartbeat_timeout": 300}'
