"""A prototype for measurement only, not part of the product: the old API's
``GET /jobState`` and ``POST /registerJob`` as a ``falcon.asgi`` application
under Granian's ASGI interface, on a minimal asyncio Redis protocol built on
hiredis (``resp.py``), to learn what an async request path would gain over
the threaded WSGI one (issue 17, item 3; docs/benchmarks.md "Async
prototype").

- ``resp.py``: an ``asyncio.Protocol`` over one (or a few) Redis connections
  that writes every command issued in one loop iteration in one write and
  matches the replies first in, first out (auto-pipelining).
- ``asgi.py``: the two endpoints (and ``/healthz``, the benchmark's
  reference), with the same answers as ``app/resources/legacy.py`` for the
  requests the benchmark sends and for the simple refusals; the same keys, and
  the product's own registerJob script with the same KEYS and ARGV.
  ``KARMCHARI_PROTO_CLIENT=redis-py`` swaps in ``redis.asyncio``.
- ``raw.py``: the same without Falcon, a bare ASGI callable: what Falcon's
  ASGI layer costs.
- ``wsgi.py``: the same two endpoints under WSGI with a blocking hiredis
  connection per thread: the control that tells what is due to async and
  what to the features the prototype leaves out.
- ``__main__.py``: ``python -m bench.async_proto``, the side-by-side run.

What the prototype leaves out, on purpose: authentication, the access line,
metrics, request ids, the serving guards, ``--access-log``, draining. It is
not to be deployed.
"""
