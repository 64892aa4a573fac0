"""``karmchari import-legacy``: the command line of ``app/legacy_import.py``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from app.arguments import Commands, add_job_arguments, add_store_arguments, config_from_args
from app.legacy_import import LegacyImport, Report, summary

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 5

DESCRIPTION = """\
Import the Go service's jobs (job:<id> hashes with type and state) with
their ids, so GET /jobState?id=<old id> answers as before. Reads them by SCAN
from --from-url (default: the store below) and writes them into the store
chosen by the same options as serve. Running it again imports nothing twice
and brings jobs whose state changed at the source up to date, so an
interrupted run is resumed by running it again.

Jobs with a state other than start, pause or kill are imported as failed;
keys without a type, and jobs of a type not in --job-types, are skipped;
other keys under job:* are left alone. All are counted in the report."""

EPILOG = f"""exit codes:
  {EXIT_OK}  the run went through (see the report for what was skipped)
  {EXIT_ERROR}  other error
  {EXIT_BAD_INPUT}  bad options, or no store configured
  {EXIT_UNAVAILABLE}  a Redis cannot be reached"""


def add_import_command(commands: Commands) -> None:
    parser = commands.add_parser(
        "import-legacy", help="import the Go service's jobs, keeping their ids",
        description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-url", metavar="URL",
                        help="the Go service's Redis, e.g. redis://redis:6379/0; "
                             "default: the store the jobs are imported into")
    add_store_arguments(parser)
    add_job_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="read everything and print the report; write nothing")
    parser.add_argument("--delete-source", action="store_true",
                        help="delete each old key once imported, unless it changed meanwhile")
    parser.add_argument("--batch", type=int, default=1000, metavar="N",
                        help="keys per SCAN and per round trip, default 1000")
    # -o and --json as on every client command.
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text",
                        help="the report as text (default) or JSON, on stdout")
    parser.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as --output json")
    parser.set_defaults(run=run_import)


def _fail(message: str, code: int) -> int:
    print(f"karmchari: {message}", file=sys.stderr)
    return code


class _Progress:
    """One line on stderr, redrawn at most five times a second; only on a
    terminal, so logs and pipes get the summary alone."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.shown = 0.0
        self.drawn = False

    def __call__(self, report: Report) -> None:
        now = time.monotonic()
        if now - self.shown < 0.2:
            return
        self.shown = now
        rate = report.scanned / report.seconds if report.seconds else 0
        # DBSIZE counts every key of the source, not only job:* ones.
        of = f" (of at most {self.total})" if self.total else ""
        written = report.imported + report.updated
        sys.stderr.write(f"\rimport-legacy: {report.scanned} job:* keys read{of}, "
                         f"{written} {'to write' if report.dry_run else 'written'}, "
                         f"{report.already} already there ({rate:,.0f} keys/s)\033[K")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run_import(args: argparse.Namespace) -> int:
    import redis

    from app.serving.common import StartupError, check_store
    from app.store import connect
    from app.store_setup import build_store

    if args.batch < 1:
        return _fail("--batch must be at least 1", EXIT_BAD_INPUT)
    try:
        config = config_from_args(args)
    except ValueError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    if not config.store_url:
        from app.embedded import socket_path
        embedded = f"unix://{socket_path(Path(config.data_dir).resolve())}"
        return _fail("import-legacy writes into the store the service uses: give it "
                     "--redis-url, --shost or --redis-sentinel (or KARMCHARI_REDIS_URL); "
                     "for the embedded store of a running karmchari serve, its socket: "
                     f"--redis-url {embedded}", EXIT_BAD_INPUT)
    timeout = max(config.redis_socket_timeout, 10.0)  # a batch is more than one request
    config.redis_socket_timeout = timeout
    try:
        store = build_store(config, config.store_url)
        # A dry run writes nothing, not even the upgrade of earlier data.
        check_store(store, wait_seconds=5, upgrade=not args.dry_run)
        if args.from_url:
            source = connect(args.from_url, max_connections=4, socket_timeout=timeout,
                             decode_responses=False)
        else:
            source = connect(config.store_url, cluster=config.redis_cluster,
                             sentinels=config.sentinel_addresses,
                             sentinel_master=config.sentinel_master, max_connections=4,
                             socket_timeout=timeout, decode_responses=False)
        total = None if config.redis_cluster and not args.from_url else source.dbsize()
    except StartupError as error:
        return _fail(str(error), EXIT_UNAVAILABLE)
    except ValueError as error:  # a URL that does not parse
        return _fail(str(error), EXIT_BAD_INPUT)
    except redis.exceptions.RedisError as error:
        return _fail(f"the source Redis cannot be read: {error}", EXIT_UNAVAILABLE)
    progress = _Progress(total) if sys.stderr.isatty() else None
    job = LegacyImport(source, store, config.job_types, history_cap=config.history_cap,
                       retention_seconds=config.retention_seconds, batch=args.batch,
                       dry_run=args.dry_run, delete_source=args.delete_source,
                       progress=progress)
    try:
        report = job.run()
    except redis.exceptions.RedisError as error:
        if progress:
            progress.close()
        print(summary(job.report), file=sys.stderr)
        return _fail(f"stopped by a Redis error: {error}; run the same command again to "
                     "go on", EXIT_UNAVAILABLE)
    finally:
        source.close()
    if progress:
        progress.close()
    if args.output == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(summary(report))
    return EXIT_OK
