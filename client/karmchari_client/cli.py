"""The ``karmchari`` command. Its client subcommands talk to the JSON API of a
running service (``--url``, ``KARMCHARI_URL``; ``--token``, ``KARMCHARI_TOKEN``);
the server distribution adds ``serve`` and ``import-legacy`` (see ``main``).

Errors are one line on stderr and an exit code a script can test (see
``EXIT_CODES_HELP``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable

from karmchari_client import ApiError, Client, ServiceUnavailable
from karmchari_client.worker import (
    DONE,
    DONE_COMMAND,
    FAIL_COMMAND,
    FAILED,
    KILLED,
    PAUSED,
    RUNNING,
)

EXIT_OK = 0
EXIT_ERROR = 1        # any other refusal, e.g. a missing token or a role that may not
EXIT_BAD_INPUT = 2    # also argparse's code for a bad command line
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4      # a transition the job's state does not allow, or a stale --if-match
EXIT_UNAVAILABLE = 5  # the service cannot be reached, or it says to retry later

# ``karmchari heartbeat`` exits with the state the job should be in, so that a
# shell worker can act on it (examples/worker.sh); away from the codes above.
STATE_EXIT = {RUNNING: EXIT_OK, PAUSED: 10, KILLED: 11, DONE: 12, FAILED: 13}

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_ERROR}  other error (e.g. missing token, role not allowed)
  {EXIT_BAD_INPUT}  bad input
  {EXIT_NOT_FOUND}  no such job
  {EXIT_REFUSED}  refused: the job's state does not allow it, or --if-match is stale
  {EXIT_UNAVAILABLE}  service down or unavailable
heartbeat exits with the state the job should be in:
  {STATE_EXIT[RUNNING]}  start: carry on
  {STATE_EXIT[PAUSED]} pause: stop working, keep heartbeating
  {STATE_EXIT[KILLED]} kill: clean up and stop
  {STATE_EXIT[DONE]} done, {STATE_EXIT[FAILED]} failed: finished; nothing more to do"""

DEFAULT_PORT = 51463
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
# The server's job states and ids (app/model.py), defined by this package's
# worker library because it must not import the server.
STATES = (RUNNING, PAUSED, KILLED, DONE, FAILED)
JOB_ID_RE = re.compile(r"[0-9a-f]{32}\Z")

# The command sent by each subcommand that changes a job's state.
STATE_COMMANDS = {"pause": PAUSED, "resume": RUNNING, "kill": KILLED, "done": DONE_COMMAND,
                  "fail": FAIL_COMMAND}


class BadInput(Exception):
    pass


# -- output ------------------------------------------------------------------------


# Control characters (C0, DEL, C1): a name, message or reason that anyone with
# a worker token can set must not drive the reader's terminal (ESC sequences
# retitle windows, rewrite lines, or worse).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_UNESCAPED_RE = re.compile(r"[\x7f-\x9f]")


def _shown(text: str) -> str:
    """``text`` for a terminal: each control character as a visible escape."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def _print_json(value: object) -> None:
    # json escapes C0 itself; DEL and C1 only with ensure_ascii, which would
    # also escape every non-ASCII letter.
    text = json.dumps(value, indent=2, ensure_ascii=False)
    print(_JSON_UNESCAPED_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[_shown(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def _progress(job: dict) -> str:
    return "" if job.get("progress") is None else f"{job['progress']:g}%"


def _job_row(job: dict) -> list[str]:
    return [job["id"], job["type"], job["state"], job.get("observed_state") or "-",
            "yes" if job.get("stalled") else "", _progress(job), job.get("worker") or "",
            job["updated_at"], job.get("name") or ""]


JOB_HEADERS = ["ID", "TYPE", "STATE", "OBSERVED", "STALLED", "PROGRESS", "WORKER", "UPDATED",
               "NAME"]


def _print_job(job: dict) -> None:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(job.get("labels", {}).items()))
    fields = [("id", job["id"]), ("type", job["type"]), ("state", job["state"]),
              ("observed state", job.get("observed_state") or "-"),
              ("stalled", "yes" if job.get("stalled") else "no"),
              ("version", str(job["version"])), ("name", job.get("name") or ""),
              ("labels", labels), ("owner", job.get("owner") or "-"),
              ("worker", job.get("worker") or ""),
              ("progress", _progress(job)), ("message", job.get("message") or ""),
              ("heartbeat timeout", f"{job.get('heartbeat_timeout', 0)}s"),
              ("heartbeat at", job.get("heartbeat_at") or ""),
              ("created at", job["created_at"]), ("updated at", job["updated_at"]),
              ("ended at", job.get("ended_at") or "")]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {_shown(value)}".rstrip())


# -- input -------------------------------------------------------------------------


def _job_id(value: str) -> str:
    if not JOB_ID_RE.match(value):
        raise argparse.ArgumentTypeError(
            f"not a job id: {value!r} (32 lowercase hexadecimal characters)")
    return value


def _label(value: str) -> tuple[str, str]:
    """KEY=VALUE or KEY:VALUE: a label key holds neither "=" nor ":"."""
    found = re.match(r"([^=:]+)[=:](.*)\Z", value, re.DOTALL)
    if not found:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE or KEY:VALUE, not {value!r}")
    return found[1], found[2]


def _labels(pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value in pairs or []:
        if key in labels:
            raise BadInput(f"label {key!r} given twice")
        labels[key] = value
    return labels


# -- subcommands --------------------------------------------------------------------


def run_register(args: argparse.Namespace, client: Client) -> int:
    job = client.register(args.type, name=args.name, labels=_labels(args.label),
                                 heartbeat_timeout=args.heartbeat_timeout,
                                 idempotency_key=args.idempotency_key)
    if args.json:
        _print_json(job)
    else:
        print(job["id"])
    return EXIT_OK


def run_get(args: argparse.Namespace, client: Client) -> int:
    ids = list(dict.fromkeys(args.job_ids))
    args.job_id = ids[0]  # for the error messages
    if args.version is not None and (args.wait is None or len(ids) > 1):
        raise BadInput("--version needs --wait and a single job")
    if len(ids) == 1:
        jobs = [client.get(ids[0], wait=args.wait, version=args.version)]
    else:
        jobs = _get_many(args, client, ids)
    if args.json:
        _print_json(jobs[0] if len(args.job_ids) == 1 else jobs)
    else:
        for index, job in enumerate(jobs):
            if index:
                print()
            _print_job(job)
    return EXIT_OK


def _get_many(args: argparse.Namespace, client: Client, ids: list[str]) -> list[dict]:
    """Several jobs with one request (POST /v1/watch: version 0 means any
    version is news); with --wait, then one more that waits until any of them
    changes."""
    answer = client.watch(dict.fromkeys(ids, 0), wait=0)
    jobs = {job["id"]: job for job in answer["changed"]}
    if args.wait and not answer["missing"]:
        answer = client.watch({i: jobs[i]["version"] for i in ids}, wait=args.wait)
        jobs.update({job["id"]: job for job in answer["changed"]})
    if answer["missing"]:
        args.job_id = ", ".join(answer["missing"])
        raise ApiError(404, {"title": "Job not found", "code": "job_not_found"})
    return [jobs[i] for i in ids]


def _where(args: argparse.Namespace) -> dict:
    """The filter options of a state command, as POST /v1/jobs/commands takes them."""
    where: dict = {}
    if args.state:
        where["state"] = args.state
    if args.type:
        where["type"] = args.type
    if args.label:
        where["label"] = [f"{k}:{v}" for k, v in _labels(args.label).items()]
    if args.stalled is not None:
        where["stalled"] = args.stalled
    return where


def _describe(where: dict) -> str:
    parts = [f"state {where['state']}" if "state" in where else "",
             f"type {where['type']}" if "type" in where else "",
             *(f"label {label}" for label in where.get("label", [])),
             {True: "stalled", False: "not stalled", None: ""}[where.get("stalled")]]
    return ", ".join(p for p in parts if p)


# Counting the jobs of a filter before the confirmation reads the listing,
# at most this many pages of 500: past them the prompt says "at least".
COUNT_PAGES = 20


def _count_matching(client: Client, where: dict) -> tuple[int, bool]:
    """How many jobs match, and whether that is all of them."""
    labels = dict(label.split(":", 1) for label in where.get("label", []))
    count, cursor = 0, None
    for _ in range(COUNT_PAGES):
        page = client.list(state=where.get("state"), type=where.get("type"), labels=labels,
                           stalled=where.get("stalled"), limit=500, cursor=cursor)
        count += len(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return count, True
    return count, False


def _confirmed(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if not sys.stdin.isatty():  # the answer was not echoed: end the prompt's line
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def run_command(args: argparse.Namespace, client: Client) -> int:
    where = _where(args)
    if len(args.job_ids) == 1 and not where:
        args.job_id = args.job_ids[0]
        return run_one_command(args, client)
    if args.job_ids and where:
        raise BadInput("give job ids or filter options (--label, --state, --type, --stalled), "
                       "not both")
    if not args.job_ids and not where:
        raise BadInput("give job ids or filter options (--label, --state, --type, --stalled)")
    if args.if_match is not None:
        raise BadInput("--if-match applies to one job only")
    command = STATE_COMMANDS[args.command]
    if not args.yes:
        if args.job_ids:
            question = f"{args.command} {len(args.job_ids)} jobs?"
        else:
            count, complete = _count_matching(client, where)
            if complete and count == 0:
                print(f"no job matches {_describe(where)}", file=sys.stderr)
                return EXIT_OK
            question = (f"{args.command} {'' if complete else 'at least '}{count} "
                        f"job{'' if count == 1 else 's'} matching {_describe(where)}?")
        if not _confirmed(question):
            print("nothing changed (answer y, or pass --yes)", file=sys.stderr)
            return EXIT_OK
    totals = dict.fromkeys(("matched", "changed", "unchanged", "refused", "not_found"), 0)
    ids = list(dict.fromkeys(args.job_ids))
    # At most 500 ids a request; a filter's walk may answer a cursor to go on from.
    batches: list[list[str] | None] = [ids[i:i + 500] for i in range(0, len(ids), 500)]
    for batch in batches or [None]:
        cursor = None
        while True:
            result = client.command_many(command, ids=batch, where=None if batch else where,
                                         reason=args.reason, cursor=cursor)
            for name in totals:
                totals[name] += result[name]
            cursor = result.get("next_cursor")
            if cursor is None:
                break
    if args.json:
        _print_json(totals)
    else:
        print(f"{totals['matched']} matched: {totals['changed']} changed, "
              f"{totals['unchanged']} unchanged, {totals['refused']} refused"
              + (f", {totals['not_found']} not found" if ids else ""))
    if totals["not_found"]:
        return EXIT_NOT_FOUND
    return EXIT_REFUSED if ids and totals["refused"] else EXIT_OK


def run_one_command(args: argparse.Namespace, client: Client) -> int:
    result = client.command(args.job_id, STATE_COMMANDS[args.command],
                            reason=args.reason, if_match=args.if_match,
                            idempotency_key=args.idempotency_key)
    if args.json:
        _print_json(result)
    else:
        job = result["job"]
        change = "" if result["changed"] else " (already)"
        print(f"{job['id']} -- {job['state']}{change}, version {job['version']}")
    return EXIT_OK


def run_list(args: argparse.Namespace, client: Client) -> int:
    if args.watch:
        if args.all:
            raise BadInput("--watch shows one page: use --limit, not --all")
        if not 0 < args.interval <= 60:
            raise BadInput("--interval is more than 0 and at most 60 seconds")
        from karmchari_client.live_list import watch_listing

        def read_page() -> dict:
            return client.list(state=args.state, type=args.type, labels=_labels(args.label),
                               stalled=args.stalled, limit=args.limit, cursor=args.cursor)
        return watch_listing(args, client, read_page, lambda jobs: _table(
            JOB_HEADERS, [_job_row(job) for job in jobs]))
    jobs: list[dict] = []
    cursor = args.cursor
    while True:
        page = client.list(state=args.state, type=args.type, labels=_labels(args.label),
                           stalled=args.stalled, limit=args.limit, cursor=cursor)
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if not args.all or cursor is None:
            break
    if args.json:
        _print_json({"jobs": jobs, "next_cursor": cursor})
        return EXIT_OK
    if jobs:
        print(_table(JOB_HEADERS, [_job_row(job) for job in jobs]))
    else:
        print("no jobs", file=sys.stderr)
    if cursor is not None:
        print(f"more jobs: add --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def run_history(args: argparse.Namespace, client: Client) -> int:
    entries = client.history(args.job_id)
    if args.json:
        _print_json(entries)
        return EXIT_OK
    rows = [[str(e["version"]), e["at"], e["command"], e["from"] or "-", e["to"],
             e["actor"] or "-", e["reason"]] for e in entries]
    print(_table(["VERSION", "AT", "COMMAND", "FROM", "TO", "ACTOR", "REASON"], rows))
    return EXIT_OK


def run_heartbeat(args: argparse.Namespace, client: Client) -> int:
    answer = client.heartbeat(args.job_id, worker=args.worker, progress=args.progress,
                              message=args.message, observed_state=args.observed_state)
    if args.json:
        _print_json(answer)
    else:
        print(answer["state"])
    return STATE_EXIT.get(answer["state"], EXIT_ERROR)


def run_delete(args: argparse.Namespace, client: Client) -> int:
    client.delete(args.job_id)
    print(f"{args.job_id} deleted")
    return EXIT_OK


# -- errors --------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    print(f"karmchari: {message}", file=sys.stderr)
    return code


def _report(error: ApiError, args: argparse.Namespace) -> int:
    detail = error.problem.get("detail") or error.problem.get("title") or f"HTTP {error.status}"
    job = getattr(args, "job_id", None)
    if error.status == 404:
        return _fail(f"no job {job}" if job else detail, EXIT_NOT_FOUND)
    if error.code == "illegal_transition":
        return _fail(f"cannot {args.command} job {job}: it is in state {error.current_state}",
                     EXIT_REFUSED)
    if error.code == "version_mismatch":
        return _fail(f"job {job} is at version {error.problem.get('version')}, not "
                     f"{args.if_match}: nothing changed", EXIT_REFUSED)
    if error.status in (400, 413, 415, 422):
        return _fail(detail, EXIT_BAD_INPUT)
    if error.status == 401:
        sent = getattr(args, "token", None) or os.environ.get("KARMCHARI_TOKEN")
        given = "the token given is not known there" if sent else \
            "no token given: set KARMCHARI_TOKEN or pass --token"
        return _fail(f"401 {detail} ({given})", EXIT_ERROR)
    return _fail(f"{error.status} {detail}", EXIT_ERROR)


def _guarded(run: Callable[[argparse.Namespace, Client], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Connects, and turns every expected failure into one line on stderr and
    its exit code."""
    def guarded(args: argparse.Namespace) -> int:
        try:
            client = Client(args.url, args.token, timeout=args.timeout)
        except ValueError as error:
            return _fail(str(error), EXIT_BAD_INPUT)
        # Older code reads ``args.json``; ``--output json`` and ``--json`` both set it.
        args.json = getattr(args, "output", "text") == "json"
        try:
            return run(args, client)
        except BadInput as error:
            return _fail(str(error), EXIT_BAD_INPUT)
        except ServiceUnavailable as error:
            detail = error.problem.get("detail") or f"HTTP {error.status}"
            if error.code == "outcome_unknown" and error.idempotency_key:
                return _fail(f"service at {client.url}: {detail} To retry safely, run the "
                             f"same command with --idempotency-key {error.idempotency_key}",
                             EXIT_UNAVAILABLE)
            if error.status:
                return _fail(f"service at {client.url} is unavailable: {detail}",
                             EXIT_UNAVAILABLE)
            return _fail(f"cannot reach the service at {client.url}: "
                         f"{detail.removeprefix(client.url + ': ')}", EXIT_UNAVAILABLE)
        except ApiError as error:
            return _report(error, args)
        except BrokenPipeError:
            # The reader went away (``karmchari list | head``): no traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
    return guarded


# -- the command line ------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--url", help=f"the service, default {DEFAULT_URL} (env KARMCHARI_URL)")
    group.add_argument("--token", help="bearer token (env KARMCHARI_TOKEN)")
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="network timeout, default 10")
    return options


def add_client_commands(commands) -> None:
    """Registers the client subcommands; each sets ``run`` to its handler."""
    common = _connection_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--output", "-o", choices=("text", "json"), default="text",
                         help="text for people (default), or JSON for scripts")
    as_json.add_argument("--json", dest="output", action="store_const", const="json",
                         help="the same as --output json")

    def add(name: str, run, help_text: str, *parents: argparse.ArgumentParser):
        parser = commands.add_parser(name, help=help_text, description=textwrap.fill(help_text, 79),
                                     parents=[*parents, common], epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
        parser.set_defaults(run=_guarded(run))
        return parser

    register = add("register", run_register, "register a job; prints its id", as_json)
    register.add_argument("type", help="job type, e.g. upload, export, teams")
    register.add_argument("--name", help="a human name")
    register.add_argument("--label", type=_label, action="append", metavar="KEY=VALUE",
                          help="a label (repeat for more)")
    register.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                          help="a running job without heartbeat this long counts as stalled")
    register.add_argument("--idempotency-key", metavar="KEY",
                          help="retrying with the same key returns the same job")

    get = add("get", run_get, "show jobs", as_json)
    get.add_argument("job_ids", type=_job_id, metavar="ID", nargs="+")
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
        state = add(name, run_command, summary + "; with several ids or with filter "
                    "options, to every job named or matching, after a confirmation", as_json)
        state.add_argument("job_ids", type=_job_id, nargs="*", metavar="ID")
        state.add_argument("--reason", help="why, kept in the job's history")
        state.add_argument("--if-match", type=int, metavar="VERSION",
                           help="only if the job is still at this version (one job)")
        state.add_argument("--idempotency-key", metavar="KEY",
                           help="running again with the same key applies the command once "
                           "(one job)")
        matching = state.add_argument_group("every job matching (all of these)")
        matching.add_argument("--label", type=_label, action="append", metavar="KEY:VALUE",
                              help="jobs with this label (repeat: all of them)")
        matching.add_argument("--state", choices=STATES)
        matching.add_argument("--type")
        stalled = matching.add_mutually_exclusive_group()
        stalled.add_argument("--stalled", action="store_true", default=None,
                             help="running jobs whose heartbeat is overdue")
        stalled.add_argument("--not-stalled", dest="stalled", action="store_false")
        state.add_argument("-y", "--yes", action="store_true",
                           help="do not ask for confirmation")

    listing = add("list", run_list, "list jobs, newest first", as_json)
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--type")
    listing.add_argument("--label", type=_label, action="append", metavar="KEY=VALUE",
                         help="only jobs with this label (repeat: all of them)")
    stalled = listing.add_mutually_exclusive_group()
    stalled.add_argument("--stalled", action="store_true", default=None,
                         help="only running jobs whose heartbeat is overdue")
    stalled.add_argument("--not-stalled", dest="stalled", action="store_false")
    listing.add_argument("--limit", type=int, help="jobs per page, default 50")
    listing.add_argument("--cursor", help="continue where a previous page ended")
    listing.add_argument("--all", action="store_true", help="follow the cursor to the end")
    listing.add_argument("--watch", action="store_true",
                         help="draw the page again whenever it changes, until Ctrl-C; with "
                              "--output json, one line of JSON per drawing")
    listing.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                         help="with --watch: read the page again at least this often, "
                              "default 2")
    listing.add_argument("--count", type=int, metavar="N",
                         help="with --watch: stop after drawing N times")

    history = add("history", run_history, "show a job's changes of state", as_json)
    history.add_argument("job_id", type=_job_id, metavar="ID")

    heartbeat = add("heartbeat", run_heartbeat,
                    "report a job's liveness and progress; prints the state the job should be "
                    "in and exits with its code (see below)", as_json)
    heartbeat.add_argument("job_id", type=_job_id, metavar="ID")
    heartbeat.add_argument("--progress", type=float, metavar="PERCENT", help="0 to 100")
    heartbeat.add_argument("--message", help="what the worker is doing")
    heartbeat.add_argument("--worker", help="the worker's name, e.g. the host")
    heartbeat.add_argument("--observed-state", choices=(RUNNING, PAUSED, KILLED),
                           help="the state the worker is actually in: acknowledges a pause, "
                                "a resume or a kill")

    delete = add("delete", run_delete, "delete a finished job and its history")
    delete.add_argument("job_id", type=_job_id, metavar="ID")


# -- the whole command ----------------------------------------------------------------

# Subcommands that come with the server distribution (``karmchari``): each is an
# entry point of this group, a function that adds its parser to the subcommands
# and sets ``run`` on it.
SERVER_COMMAND_GROUP = "karmchari.commands"
SERVER_COMMANDS = ("serve", "import-legacy")
# The server is not on an index: it installs from a clone, next to this distribution.
SERVER_INSTALL_HINT = ("in a clone of the Karmchari repository, pip install ./client . "
                       "(the server, and this client it depends on)")


def installed_server_commands() -> dict[str, Callable]:
    from importlib.metadata import entry_points
    return {point.name: point.load() for point in entry_points(group=SERVER_COMMAND_GROUP)}


def build_parser(server_commands: dict[str, Callable]) -> argparse.ArgumentParser:
    from karmchari_client import __version__

    parser = argparse.ArgumentParser(
        prog="karmchari", allow_abbrev=False, epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Karmchari: a REST job manager for long-running jobs.")
    parser.add_argument("--version", action="version", version=f"karmchari {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(server_commands, key=lambda name: (name != "serve", name)):
        server_commands[name](commands)
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None,
         server_commands: dict[str, Callable] | None = None) -> int:
    """``karmchari``. The old service's command line (``karmchari -port 51463``,
    no subcommand) means ``serve``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if server_commands is None:
        server_commands = installed_server_commands()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["serve", *argv]
    if argv[0] in SERVER_COMMANDS and argv[0] not in server_commands:
        if argv == ["serve"]:  # a bare ``karmchari`` on a client-only install
            build_parser(server_commands).print_help(sys.stderr)
        return _fail(f"{argv[0]!r} is part of the Karmchari server, which is not installed "
                     f"here: {SERVER_INSTALL_HINT}", EXIT_BAD_INPUT)
    args = build_parser(server_commands).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
