"""Settings, each declared once: its type (the annotation), default, range, help
and option name live on the ``Config`` field. The ``KARMCHARI_<NAME>`` environment
variables, the ``karmchari serve`` flags and the range check at start-up are all
derived from these declarations (see ``SETTINGS``, ``from_env``, ``app/arguments.py``).
Precedence: defaults, then the environment, then the command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.model import DEFAULT_JOB_TYPES

DEFAULT_PORT = 51463
ENV_PREFIX = "KARMCHARI_"
DAY = 24 * 3600
SERVERS = ("auto", "waitress", "granian")
ACCESS_LOG_MODES = ("stderr", "logging", "off")
# What a setting holds, as parsed from text.
SettingValue = bool | int | float | str | tuple[str, ...]


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
    ) or str(Path.home() / ".local" / "share")
    return str(Path(base) / "karmchari")


def setting(default: Any, help: str, *, range: tuple[float, float] | None = None,
            metavar: str | None = None, choices: tuple[str, ...] | None = None,
            old_flag: str | None = None, flag: bool = True) -> Any:
    """One setting's declaration. ``range`` is inclusive (min, max); ``flag=False``
    keeps a setting out of the command line (secrets must not show in ``ps``)."""
    meta = {"help": help, "range": range, "metavar": metavar, "choices": choices,
            "old_flag": old_flag, "flag": flag}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # Listening
    host: str = setting("127.0.0.1", "address to listen on; any other than loopback needs "
                        "tokens, or --allow-unauthenticated")
    port: int = setting(DEFAULT_PORT, "port to listen on (0: any free port)",
                        range=(0, 65535), old_flag="-port")
    threads: int = setting(16, "request threads per process", range=(1, 1024))
    workers: int = setting(0, "processes sharing one listening socket (Linux; 0: one per CPU, "
                           "at most 8, on Linux, else 1)", range=(0, 64))
    server: str = setting("auto", "the HTTP server: granian (needs karmchari[fast]; not on "
                          "Windows), waitress, or auto: granian where it is installed and "
                          "runs, else waitress", choices=SERVERS)
    shutdown_timeout: float = setting(30.0, "longest drain after SIGTERM/SIGINT before open "
                                      "requests are cut", range=(0.0, 3600.0),
                                      metavar="SECONDS")
    # Store: redis_url, shost or redis_sentinel selects an external server; none runs the
    # embedded one.
    redis_url: str = setting("", "use the Redis at this redis://, rediss:// (TLS) or unix:// "
                             "URL; wins over --shost", metavar="URL")
    shost: str = setting("", "use the Redis at HOST:PORT (database 0)", metavar="HOST:PORT",
                         old_flag="-shost")
    redis_cluster: bool = setting(False, "the Redis URL names a node of a Redis Cluster")
    # HOST:PORT,... of Sentinels that name the master; redis_url then brings only the
    # master's credentials, database and TLS options (its host and port are not used).
    redis_sentinel: str = setting("", "ask these Sentinels for the master; --redis-url then "
                                  "brings only its credentials, database and TLS options",
                                  metavar="HOST:PORT[,HOST:PORT...]")
    sentinel_master: str = setting("mymaster", "the master's name at the Sentinels",
                                   metavar="NAME")
    redis_socket_timeout: float = setting(2.0, "seconds to wait for one Redis reply or "
                                          "connection before answering 503",
                                          range=(0.05, 300.0), metavar="SECONDS")
    data_dir: str = setting(_default_data_dir, "where the embedded store keeps its data",
                            metavar="PATH")
    store_binary: str = setting("", "the embedded store's server (Redis >= 7.0 or Valkey >= "
                                "7.2); empty: redis-server or valkey-server on PATH if new "
                                "enough, else the bundled Valkey", metavar="PATH")
    key_prefix: str = setting("kc", "namespace of the Redis keys", metavar="PREFIX")
    # Jobs
    job_types: tuple[str, ...] = setting(DEFAULT_JOB_TYPES, "the job types accepted, "
                                         "comma-separated", metavar="TYPE,...")
    history_cap: int = setting(100, "history entries kept per job", range=(1, 100_000))
    retention_seconds: int = setting(7 * DAY, "how long finished jobs are kept",
                                     range=(1, 3650 * DAY), metavar="SECONDS")
    idempotency_ttl: int = setting(DAY, "how long an Idempotency-Key is remembered",
                                   range=(1, 365 * DAY), metavar="SECONDS")
    sweep_interval: float = setting(60.0, "seconds between retention sweeps (finished jobs "
                                    "past their retention are deleted)",
                                    range=(0.1, DAY), metavar="SECONDS")
    # Limits
    max_body_bytes: int = setting(64 * 1024, "largest request body",
                                  range=(64, 64 * 1024 * 1024), metavar="BYTES")
    max_header_bytes: int = setting(16 * 1024, "largest request head",
                                    range=(1024, 1024 * 1024), metavar="BYTES")
    max_labels: int = setting(16, "labels per job", range=(0, 1000))
    max_label_chars: int = setting(256, "characters per label key or value",
                                   range=(1, 65536))
    max_text_chars: int = setting(1024, "characters of a reason or a heartbeat message (a "
                                  "job's name and worker: 256 at most)",
                                  range=(1, 1024 * 1024))
    max_batch: int = setting(500, "items in one batch request", range=(1, 100_000))
    max_list_limit: int = setting(500, "largest page of a listing", range=(1, 100_000))
    max_wait_seconds: float = setting(60.0, "longest long-poll wait", range=(0.0, 3600.0),
                                      metavar="SECONDS")
    # Each waiting request holds a request thread; by default the other half of the
    # threads stays free for ordinary requests.
    max_waiters: int = setting(0, "waiting requests (long-polls and watches) per process; "
                               "past it 429 (0: half the threads)", range=(0, 100_000),
                               metavar="N")
    max_watch_jobs: int = setting(1000, "jobs in one POST /v1/watch", range=(1, 100_000),
                                  metavar="N")
    connection_limit: int = setting(10_000, "open connections per process, idle ones "
                                    "included; past it new clients wait (also capped by the "
                                    "open-files limit)", range=(1, 1_000_000))
    idle_timeout: int = setting(60, "seconds an idle keep-alive connection stays open",
                                range=(1, DAY), metavar="SECONDS")
    # Slow and greedy clients: each may hold a connection for a bounded time, never
    # a request thread, and only part of the waiting slots.
    header_timeout: int = setting(10, "longest time for a request head to arrive, from its "
                                  "first byte (a total deadline, not reset by each line)",
                                  range=(1, 3600), metavar="SECONDS")
    body_timeout: float = setting(10.0, "longest time for a request body to arrive once its "
                                  "head has; past it 408 (granian; waitress reads bodies "
                                  "without a thread and closes them after --idle-timeout)",
                                  range=(0.1, 3600.0), metavar="SECONDS")
    max_waiters_per_client: int = setting(0, "waiting requests one token name (auth off: one "
                                           "peer address) may hold; past it 429 (0: half of "
                                           "--max-waiters, at least 1)", range=(0, 100_000),
                                           metavar="N")
    retry_after_seconds: int = setting(1, "Retry-After of a 503", range=(0, 3600),
                                       metavar="SECONDS")
    # Security
    tokens: str = setting("", "bearer tokens, name:role:token,...", flag=False)
    tokens_file: str = setting("", "lines of 'name role sha256-hex-of-token', so the file "
                               "holds no secret", metavar="PATH")
    allow_unauthenticated: bool = setting(False, "listen beyond loopback without tokens "
                                          "(dangerous)")
    # The address of a reverse proxy whose X-Forwarded-For/-Proto waitress may believe.
    trusted_proxy: str = setting("", "address of a reverse proxy whose X-Forwarded-For and "
                                 "-Proto are believed", metavar="ADDRESS")
    log_level: str = setting("info", "log level",
                             choices=("debug", "info", "warning", "error"))
    access_log: str = setting("stderr", "where the access lines go: stderr (written in "
                              "batches, the format of the other log lines), logging (each "
                              "through the karmchari.access logger) or off",
                              choices=ACCESS_LOG_MODES)
    # Hardening (issue 18): the bulk-command cap, the Host and Origin checks, the wait
    # for the store at start.
    max_bulk: int = setting(2, "bulk commands (POST /v1/jobs/commands) running at once per "
                            "process, at most a quarter of --threads; past it 429",
                            range=(1, 1024), metavar="N")
    allowed_hosts: tuple[str, ...] = setting((), "host names a request's Host and Origin may "
                                             "name besides the service's own addresses, "
                                             "localhost and loopback ('*': any)",
                                             metavar="HOST,...")
    store_wait: float = setting(30.0, "how long serve waits for an unreachable store at start "
                                "before giving up", range=(0.0, 3600.0), metavar="SECONDS")

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
    def bulk_limit(self) -> int:
        # A quarter of the threads at most (one at least): bulk commands never take
        # the threads that ordinary requests need.
        return max(1, min(self.max_bulk, self.threads // 4))

    @property
    def waiter_limit(self) -> int:
        # Below the threads, always: one thread at least stays free for other
        # requests (with one thread, no request waits: long-polls get 429).
        return self.max_waiters or self.threads // 2

    @property
    def waiter_limit_per_client(self) -> int:
        return self.max_waiters_per_client or max(1, self.waiter_limit // 2)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> Config:
        """``KARMCHARI_<NAME>`` for every setting; ``overrides`` (the command line)
        win over the environment. Raises ValueError naming the variable or option."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = env.get(s.env)
            if raw is not None and raw != "":
                values[s.name] = s.parse(raw, s.env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        """Refuse a value out of range or a malformed Sentinel list at start-up, not at
        the first request."""
        for s in SETTINGS:
            s.check(getattr(self, s.name))
        if self.max_waiters >= self.threads:
            raise ValueError(f"--max-waiters (KARMCHARI_MAX_WAITERS) must be below --threads "
                             f"({self.threads}), not {self.max_waiters}: waiting requests "
                             "would hold every thread, and nothing else would be answered")
        check_store_url(self.redis_url)
        if self.redis_sentinel:
            parse_addresses(self.redis_sentinel)
            if self.redis_cluster:
                raise ValueError("--redis-sentinel and --redis-cluster exclude each other")


class Setting:
    """A view of one declared ``Config`` field."""

    def __init__(self, f: Field[Any]) -> None:
        self.name: str = f.name
        self.kind: str = f.type if isinstance(f.type, str) else f.type.__name__
        factory = f.default_factory  # set where the default is not (a list's)
        self.default: Any = f.default if factory is MISSING else factory()
        meta = f.metadata
        self.help: str = meta["help"]
        self.range: tuple[float, float] | None = meta["range"]
        self.metavar: str | None = meta["metavar"]
        self.choices: tuple[str, ...] | None = meta["choices"]
        self.old_flag: str | None = meta["old_flag"]
        self.flag: bool = meta["flag"]

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def range_text(self) -> str:
        if self.range is None:
            return "any value"
        low, high = self.range
        return f"{low} to {high}" if self.kind == "int" else f"{low:g} to {high:g}"

    def parse(self, raw: str, source: str) -> SettingValue:
        """Text (an environment value or a flag's argument) as this setting's type."""
        if self.kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{source}: not a boolean: {raw!r}")
        if self.kind in ("int", "float"):
            try:
                return int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                raise ValueError(f"{source}: not a number: {raw!r}") from None
        if self.kind.startswith("tuple"):
            return tuple(t.strip() for t in raw.split(",") if t.strip())
        if self.choices and raw not in self.choices:
            raise ValueError(f"{source}: must be one of {', '.join(self.choices)}: {raw!r}")
        return raw

    def check(self, value: object) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.option} ({self.env}) must be one of "
                             f"{', '.join(self.choices)}, not {value!r}")
        if self.range is None:
            return
        low, high = self.range
        # float('nan') compares false with everything, so test for "inside", not "outside".
        if not (isinstance(value, int | float) and low <= value <= high):
            raise ValueError(f"{self.option} ({self.env}) must be from {self.range_text}, "
                             f"not {value!r}")


SETTINGS: tuple[Setting, ...] = tuple(Setting(f) for f in fields(Config))


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


STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def check_store_url(url: str) -> None:
    """One clear line for a URL redis-py would refuse with a traceback."""
    if url and not url.startswith(STORE_SCHEMES):
        hint = f" (for a host and port: redis://{url}/0)" if "://" not in url else ""
        raise ValueError(f"--redis-url (KARMCHARI_REDIS_URL) must start with "
                         f"{', '.join(STORE_SCHEMES)}, not {url!r}{hint}")
