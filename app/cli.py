"""The server's subcommands of ``karmchari``. The command itself belongs to
the client distribution (``karmchari_client/cli.py``), which finds these
through the ``karmchari.commands`` entry points declared in pyproject.toml.

The old service's flags ``-port`` and ``-shost HOST:PORT`` work as written,
and ``karmchari -port 51463`` without a subcommand means ``serve``.
"""

from __future__ import annotations

import argparse
import sys

from app.config import Config


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = "(env KARMCHARI_%s)"
    parser.add_argument("-port", "--port", type=int, help="port to listen on, default 51463 "
                        + env % "PORT")
    parser.add_argument("-shost", "--shost", metavar="HOST:PORT",
                        help="use the Redis at HOST:PORT " + env % "SHOST")
    parser.add_argument("--redis-url", metavar="URL",
                        help="use the Redis at URL: redis://, rediss:// (TLS), unix:// "
                        + env % "REDIS_URL")
    parser.add_argument("--redis-cluster", action="store_true", default=None,
                        help="the Redis URL is a Redis Cluster node " + env % "REDIS_CLUSTER")
    parser.add_argument("--redis-sentinel", metavar="HOST:PORT[,HOST:PORT...]",
                        help="ask these Sentinels for the master; --redis-url then brings only "
                        "its credentials, database and TLS options " + env % "REDIS_SENTINEL")
    parser.add_argument("--sentinel-master", metavar="NAME",
                        help="the master's name at the Sentinels, default mymaster "
                        + env % "SENTINEL_MASTER")
    parser.add_argument("--redis-socket-timeout", type=float, metavar="SECONDS",
                        help="longest wait for one Redis reply or connection, default 2 "
                        + env % "REDIS_SOCKET_TIMEOUT")
    parser.add_argument("--host", help="address to listen on, default 127.0.0.1 "
                        + env % "HOST")
    parser.add_argument("--threads", type=int, help="request threads per process, default 16 "
                        + env % "THREADS")
    parser.add_argument("--workers", type=int,
                        help="processes sharing the listening socket (Linux), default 1 "
                        + env % "WORKERS")
    parser.add_argument("--server", choices=["waitress", "granian"],
                        help="HTTP server, default waitress; granian needs karmchari[fast] "
                        + env % "SERVER")
    parser.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                        help="longest drain after SIGTERM/SIGINT, default 30 "
                        + env % "SHUTDOWN_TIMEOUT")
    parser.add_argument("--idle-timeout", type=int, metavar="SECONDS",
                        help="idle keep-alive connections close after this, default 60 "
                        + env % "IDLE_TIMEOUT")
    parser.add_argument("--header-timeout", type=int, metavar="SECONDS",
                        help="longest wait for a request head (granian), default 30 "
                        + env % "HEADER_TIMEOUT")
    parser.add_argument("--connection-limit", type=int,
                        help="open connections per process (waitress), default 10000 "
                        + env % "CONNECTION_LIMIT")
    parser.add_argument("--max-waiters", type=int, metavar="N",
                        help="waiting requests (long-polls and watches) per process; past it "
                        "429, default 0: half the threads " + env % "MAX_WAITERS")
    parser.add_argument("--max-watch-jobs", type=int, metavar="N",
                        help="jobs in one POST /v1/watch, default 1000 " + env % "MAX_WATCH_JOBS")
    parser.add_argument("--data-dir", help="embedded store's data directory "
                        + env % "DATA_DIR")
    parser.add_argument("--store-binary", metavar="PATH",
                        help="embedded store's server (Redis >= 7.0 or Valkey >= 7.2), default: "
                        "redis-server or valkey-server on PATH if new enough, else the bundled "
                        "Valkey " + env % "STORE_BINARY")
    parser.add_argument("--tokens-file", metavar="PATH",
                        help="lines of 'name role sha256-hex-of-token' " + env % "TOKENS_FILE")
    parser.add_argument("--allow-unauthenticated", action="store_true", default=None,
                        help="allow a non-loopback --host without tokens (dangerous) "
                        + env % "ALLOW_UNAUTHENTICATED")
    parser.add_argument("--job-types", type=lambda s: tuple(filter(None, s.split(","))),
                        help="comma-separated job types, default upload,export,teams "
                        + env % "JOB_TYPES")
    parser.add_argument("--history-cap", type=int, help="history entries kept per job "
                        + env % "HISTORY_CAP")
    parser.add_argument("--retention-seconds", type=int,
                        help="how long finished jobs are kept, default 7 days "
                        + env % "RETENTION_SECONDS")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help=env % "LOG_LEVEL")


def config_from_args(args: argparse.Namespace) -> Config:
    names = ("port", "shost", "redis_url", "redis_cluster", "redis_sentinel", "sentinel_master",
             "redis_socket_timeout", "host", "threads", "workers", "server",
             "shutdown_timeout", "idle_timeout", "header_timeout", "connection_limit",
             "max_waiters", "max_watch_jobs", "data_dir", "store_binary", "tokens_file",
             "allow_unauthenticated", "job_types", "history_cap", "retention_seconds",
             "log_level")
    return Config.from_env(**{name: getattr(args, name) for name in names})


def add_serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="run the service", allow_abbrev=False)
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from app.serving import StartupError, serve
    try:
        config = config_from_args(args)
    except ValueError as error:  # a KARMCHARI_* variable that does not parse
        print(f"karmchari: {error}", file=sys.stderr)
        return 2
    try:
        return serve(config)
    except StartupError as error:
        print(f"karmchari: {error}", file=sys.stderr)
        return 2


# The same as the entry points, for ``python -m app`` from a tree that is not installed.
SERVER_COMMANDS = {"serve": add_serve_command}


def build_parser() -> argparse.ArgumentParser:
    from karmchari_client.cli import build_parser as karmchari_parser
    return karmchari_parser(SERVER_COMMANDS)


def main(argv: list[str] | None = None) -> int:
    from karmchari_client.cli import main as karmchari
    return karmchari(argv, server_commands=SERVER_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
