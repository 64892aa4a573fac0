-- Old API: POST /registerJob type=teams; every request registers a new job.
require "common"

wrk.method = "POST"
wrk.path = "/registerJob"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "type=teams"
