-- The same request each time (GET /healthz): the summary only.
require "common"
