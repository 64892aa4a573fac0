"""The client subcommands' command line (``add_client_commands``)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING

from karmchari_client import cli_commands, cli_jobs
from karmchari_client.cli_common import (
    DEFAULT_URL,
    EXIT_CODES_HELP,
    STATES,
    job_id,
    label,
)
from karmchari_client.cli_errors import guarded
from karmchari_client.client import Client
from karmchari_client.states import KILLED, PAUSED, RUNNING


def connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--url", help=f"the service, default {DEFAULT_URL} (env KARMCHARI_URL)")
    group.add_argument("--token", help="bearer token (env KARMCHARI_TOKEN)")
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="network timeout, default 10")
    return options


if TYPE_CHECKING:
    # What argparse's add_subparsers() answers (its class has no public name;
    # it is generic in typeshed only).
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
Run = Callable[[argparse.Namespace, Client], int]


def add_client_commands(commands: Subcommands) -> None:
    """Registers the client subcommands; each sets ``run`` to its handler."""
    common = connection_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--output", "-o", choices=("text", "json"), default="text",
                         help="text for people (default), or JSON for scripts")
    as_json.add_argument("--json", dest="output", action="store_const", const="json",
                         help="the same as --output json")

    def add(name: str, run: Run, help_text: str,
            *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=textwrap.fill(help_text, 79),
                                     parents=[*parents, common], epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
        parser.set_defaults(run=guarded(run))
        return parser

    register = add("register", cli_jobs.run_register, "register a job; prints its id", as_json)
    register.add_argument("type", help="job type, e.g. upload, export, teams")
    register.add_argument("--name", help="a human name")
    register.add_argument("--label", type=label, action="append", metavar="KEY=VALUE",
                          help="a label (repeat for more)")
    register.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                          help="a running job without heartbeat this long counts as stalled")
    register.add_argument("--idempotency-key", metavar="KEY",
                          help="retrying with the same key returns the same job")

    get = add("get", cli_jobs.run_get, "show jobs", as_json)
    get.add_argument("job_ids", type=job_id, metavar="ID", nargs="+")
    get.add_argument("--wait", type=float, metavar="SECONDS",
                     help="first wait up to SECONDS until the job, or any of the jobs, "
                          "changes (one long-poll for all)")
    get.add_argument("--version", type=int,
                     help="with --wait: return once the version differs from this one")

    for name, summary in (("pause", "ask the job's worker to pause"),
                          ("resume", "ask the job's worker to resume a paused job"),
                          ("kill", "ask the job's worker to stop the job for good"),
                          ("done", "record that the job finished"),
                          ("fail", "record that the job failed")):
        state = add(name, cli_commands.run_command, summary + "; with several ids or with filter "
                    "options, to every job named or matching, after a confirmation", as_json)
        state.add_argument("job_ids", type=job_id, nargs="*", metavar="ID")
        state.add_argument("--reason", help="why, kept in the job's history")
        state.add_argument("--if-match", type=int, metavar="VERSION",
                           help="only if the job is still at this version (one job)")
        state.add_argument("--idempotency-key", metavar="KEY",
                           help="running again with the same key applies the command once "
                           "(one job)")
        matching = state.add_argument_group("every job matching (all of these)")
        matching.add_argument("--label", type=label, action="append", metavar="KEY:VALUE",
                              help="jobs with this label (repeat: all of them)")
        matching.add_argument("--state", choices=STATES)
        matching.add_argument("--type")
        stalled = matching.add_mutually_exclusive_group()
        stalled.add_argument("--stalled", action="store_true", default=None,
                             help="running jobs whose heartbeat is overdue")
        stalled.add_argument("--not-stalled", dest="stalled", action="store_false")
        started = matching.add_mutually_exclusive_group()
        started.add_argument("--started", action="store_true", default=None,
                             help="jobs that have had a heartbeat")
        started.add_argument("--not-started", dest="started", action="store_false",
                             help="jobs with no heartbeat yet (with --state start: waiting "
                                  "for a worker)")
        state.add_argument("-y", "--yes", action="store_true",
                           help="do not ask for confirmation")

    listing = add("list", cli_jobs.run_list, "list jobs, newest first", as_json)
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--type")
    listing.add_argument("--label", type=label, action="append", metavar="KEY=VALUE",
                         help="only jobs with this label (repeat: all of them)")
    stalled = listing.add_mutually_exclusive_group()
    stalled.add_argument("--stalled", action="store_true", default=None,
                         help="only running jobs whose heartbeat is overdue")
    stalled.add_argument("--not-stalled", dest="stalled", action="store_false")
    started = listing.add_mutually_exclusive_group()
    started.add_argument("--started", action="store_true", default=None,
                         help="only jobs that have had a heartbeat")
    started.add_argument("--not-started", dest="started", action="store_false",
                         help="only jobs with no heartbeat yet")
    started.add_argument("--waiting", action="store_true",
                         help="only jobs waiting for a worker: --state start --not-started "
                              "--not-stalled")
    listing.add_argument("--worker", metavar="NAME",
                         help="only jobs whose last heartbeat named this worker")
    listing.add_argument("--name-prefix", metavar="TEXT",
                         help="only jobs whose name starts with TEXT")
    listing.add_argument("--limit", type=int, help="jobs per page, default 50")
    listing.add_argument("--cursor", help="continue where a previous page ended")
    listing.add_argument("--all", action="store_true", help="follow the cursor to the end")
    listing.add_argument("--watch", action="store_true",
                         help="refresh the page every --interval and whenever a job shown "
                              "changes, until Ctrl-C; with --output json, one line of JSON "
                              "per refresh")
    listing.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                         help="with --watch: seconds between refreshes, default 2")
    listing.add_argument("--count", type=int, metavar="N",
                         help="with --watch: stop after N refreshes")

    history = add("history", cli_jobs.run_history, "show a job's changes of state", as_json)
    history.add_argument("job_id", type=job_id, metavar="ID")

    heartbeat = add("heartbeat", cli_jobs.run_heartbeat,
                    "report a job's liveness and progress; prints the state the job should be "
                    "in and exits with its code (see below)", as_json)
    heartbeat.add_argument("job_id", type=job_id, metavar="ID")
    heartbeat.add_argument("--progress", type=float, metavar="PERCENT", help="0 to 100")
    heartbeat.add_argument("--message", help="what the worker is doing")
    heartbeat.add_argument("--worker", help="the worker's name, e.g. the host")
    heartbeat.add_argument("--observed-state", choices=(RUNNING, PAUSED, KILLED),
                           help="the state the worker is actually in: acknowledges a pause, "
                                "a resume or a kill")

    rerun = add("rerun", cli_jobs.run_rerun,
                "register a new job like an ended one (its type, name, labels and heartbeat "
                "timeout); prints the new job's id", as_json)
    rerun.add_argument("job_id", type=job_id, metavar="ID")
    rerun.add_argument("--idempotency-key", metavar="KEY",
                       help="running again with the same key reruns once")

    workers = add("workers", cli_jobs.run_workers,
                  "list the workers seen in heartbeats, with their jobs by state", as_json)
    workers.add_argument("--limit", type=int, help="workers per page")
    workers.add_argument("--cursor", help="continue where a previous page ended")
    workers.add_argument("--all", action="store_true", help="follow the cursor to the end")

    delete = add("delete", cli_jobs.run_delete, "delete a finished job and its history")
    delete.add_argument("job_id", type=job_id, metavar="ID")
