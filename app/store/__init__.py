"""The only part of Karmchari that talks to Redis.

Every change of data is one Lua script from ``lua/`` (validate first, then
write), called through its binding (``bindings.py``); Python only reads.
``JobStore`` is the one object the rest of the service holds: a façade over
the rooms below, one per concern.

- ``core``: the client, settings, scripts and bindings; reads of single jobs
- ``writes``: register, command, heartbeat, delete
- ``listing``: filtered listings, newest first
- ``bulk``: one command applied to many jobs; ``bulk_delete``: ended jobs deleted
  by ids or by a filter
- ``rerun``: an ended job run again
- ``workers``: the workers seen in heartbeats (``lexical``: the name and
  worker indexes the listings read)
- ``retention``: the sweep of finished jobs, and of silent workers
- ``stats``: counts for an overview (``run_times``: run times by type)
- ``health``: readiness and the server's flavor
- ``migrations``: upgrades of data written by earlier releases
"""

from __future__ import annotations

from app.errors import StoreUnavailable
from app.store.bulk import BulkInterrupted, BulkResult
from app.store.bulk_delete import BulkDeleteStore, DeleteResult
from app.store.connection import connect, is_transient
from app.store.health import HealthStore
from app.store.listing import JobFilter, Page
from app.store.migrations import MigrationsStore
from app.store.rerun import RerunStore
from app.store.retention import RetentionStore
from app.store.run_times import RunTimes
from app.store.stats import Stats, StatsStore
from app.store.workers import WorkerInfo
from app.store.writes import HeartbeatAnswer, HeartbeatReport, heartbeat_args

__all__ = ["JobStore", "JobFilter", "HeartbeatAnswer", "HeartbeatReport", "Page", "Stats",
           "BulkResult", "BulkInterrupted", "DeleteResult", "RunTimes", "WorkerInfo", "connect",
           "heartbeat_args", "is_transient", "StoreUnavailable"]


class JobStore(RetentionStore, BulkDeleteStore, RerunStore, StatsStore, HealthStore,
               MigrationsStore):
    """Every room of the store on one client; constructed as ``StoreCore``
    (client, history_cap, retention_seconds, idempotency_ttl, keys)."""
