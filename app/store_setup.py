"""The store a configuration names: one place for the service, the import
command and the servers' workers to build it the same way."""

from __future__ import annotations

from app.config import Config
from app.store import JobStore, connect
from app.store.keys import KeySchema


def build_store(config: Config, url: str) -> JobStore:
    client = connect(url, cluster=config.redis_cluster, sentinels=config.sentinel_addresses,
                     sentinel_master=config.sentinel_master,
                     max_connections=config.threads + 4,
                     socket_timeout=config.redis_socket_timeout)
    return JobStore(client, history_cap=config.history_cap,
                    retention_seconds=config.retention_seconds,
                    idempotency_ttl=config.idempotency_ttl, keys=KeySchema(config.key_prefix))
