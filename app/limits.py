"""Limits that the store enforces and the API's description states: one home
below both, so neither reaches into the other for a number."""

# Index entries one bulk command walks at most per request; past it the answer
# carries a cursor to continue from (about 4 s of work on a small machine).
MAX_EXAMINED = 100_000

# The same for a bulk delete, which reads each job before its deleteJob call.
MAX_DELETE_EXAMINED = 10_000
