"""Settings: defaults as class attributes, overridden by ``KARMCHARI_*``
environment variables, then by command-line options."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from app.model import DEFAULT_JOB_TYPES

DEFAULT_PORT = 51463
SERVERS = ("waitress", "granian")


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
    ) or str(Path.home() / ".local" / "share")
    return str(Path(base) / "karmchari")


@dataclass
class Config:
    # Listening
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int = 16
    workers: int = 1
    # The HTTP server: "waitress" (default, everywhere) or "granian" (karmchari[fast]).
    server: str = "waitress"
    # Seconds a drain (SIGTERM/SIGINT) may take before open requests are cut.
    shutdown_timeout: float = 30.0
    # Store: redis_url, shost or redis_sentinel selects an external server; none runs the
    # embedded one.
    redis_url: str = ""
    shost: str = ""
    redis_cluster: bool = False
    # HOST:PORT,... of Sentinels that name the master; redis_url then brings only the
    # master's credentials, database and TLS options (its host and port are not used).
    redis_sentinel: str = ""
    sentinel_master: str = "mymaster"
    redis_socket_timeout: float = 2.0
    data_dir: str = field(default_factory=_default_data_dir)
    # The embedded store's server binary; "" chooses (app/embedded.py).
    store_binary: str = ""
    key_prefix: str = "kc"
    # Jobs
    job_types: tuple[str, ...] = DEFAULT_JOB_TYPES
    history_cap: int = 100
    retention_seconds: int = 7 * 24 * 3600
    idempotency_ttl: int = 24 * 3600
    sweep_interval: float = 60.0
    # Limits
    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_labels: int = 16
    max_label_chars: int = 256
    max_text_chars: int = 1024
    max_batch: int = 500
    max_list_limit: int = 500
    max_wait_seconds: float = 60.0
    # Waiting requests (long-polls and watches) per process; each holds a request
    # thread. 0: half the threads, so the other half stays free for ordinary requests.
    max_waiters: int = 0
    max_watch_jobs: int = 1000  # jobs in one POST /v1/watch
    # Open connections per process (waitress; granian is bounded by the open-files limit).
    connection_limit: int = 10_000
    # Seconds an idle keep-alive connection stays open.
    idle_timeout: int = 60
    # Seconds a client may take to send a request head (granian).
    header_timeout: int = 30
    retry_after_seconds: int = 1
    # Security
    tokens: str = ""
    tokens_file: str = ""
    allow_unauthenticated: bool = False
    # The address of a reverse proxy whose X-Forwarded-For/-Proto waitress may believe.
    trusted_proxy: str = ""
    log_level: str = "info"

    @property
    def store_url(self) -> str:
        """The external Redis to use, or "" for the embedded default."""
        if self.redis_url:
            return self.redis_url
        if self.redis_sentinel:
            return "redis://"  # the master's address comes from the Sentinels
        if self.shost:
            return f"redis://{self.shost}/0"
        return ""

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_sentinel) if self.redis_sentinel else []

    @property
    def waiter_limit(self) -> int:
        return self.max_waiters or max(1, self.threads // 2)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Config:
        """``KARMCHARI_<FIELD>`` for every field (``KARMCHARI_JOB_TYPES`` is a
        comma-separated list); ``overrides`` win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(f"KARMCHARI_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = parse_value(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        """Refuse a malformed setting at start-up, not at the first request."""
        if self.server not in SERVERS:
            raise ValueError(f"KARMCHARI_SERVER: not one of {', '.join(SERVERS)}: "
                             f"{self.server!r}")
        if self.max_waiters < 0:
            raise ValueError("KARMCHARI_MAX_WAITERS: must be 0 (half the threads) or more")
        if self.max_watch_jobs < 1:
            raise ValueError("KARMCHARI_MAX_WATCH_JOBS: must be at least 1")
        if self.redis_sentinel:
            parse_addresses(self.redis_sentinel)
            if self.redis_cluster:
                raise ValueError("--redis-sentinel and --redis-cluster exclude each other")


def parse_value(name: str, raw: str):
    kind = {f.name: f.type for f in fields(Config)}[name]
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"KARMCHARI_{name.upper()}: not a boolean: {raw!r}")
    if kind in ("int", "float"):
        try:
            return int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ValueError(f"KARMCHARI_{name.upper()}: not a number: {raw!r}") from None
    if kind.startswith("tuple"):
        return tuple(t.strip() for t in raw.split(",") if t.strip())
    return raw


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` (an IPv6 host in brackets) as (host, port) pairs."""
    addresses = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"KARMCHARI_REDIS_SENTINEL: not HOST:PORT: {item!r}")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ValueError(f"KARMCHARI_REDIS_SENTINEL: not HOST:PORT[,HOST:PORT...]: {text!r}")
    return addresses
