"""The ``karmchari`` subcommands that read or write one job at a time (the
state commands are in ``cli_commands``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from karmchari_client.cli_common import EXIT_ERROR, EXIT_OK, STATE_EXIT, BadInput, labels
from karmchari_client.cli_output import (
    JOB_HEADERS,
    job_row,
    local_time,
    print_job,
    print_json,
    table,
)
from karmchari_client.client import ApiError, Client, Json


def run_register(args: argparse.Namespace, client: Client) -> int:
    job = client.register(args.type, name=args.name, labels=labels(args.label),
                                 heartbeat_timeout=args.heartbeat_timeout,
                                 idempotency_key=args.idempotency_key)
    if args.json:
        print_json(job)
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
        print_json(jobs[0] if len(args.job_ids) == 1 else jobs)
    else:
        for index, job in enumerate(jobs):
            if index:
                print()
            print_job(job)
    return EXIT_OK


def _get_many(args: argparse.Namespace, client: Client, ids: list[str]) -> list[Json]:
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


def list_filters(args: argparse.Namespace) -> dict[str, Any]:
    """``karmchari list``'s options, as ``Client.list`` takes them."""
    state, stalled, started = args.state, args.stalled, args.started
    if args.waiting:
        if state not in (None, "start") or stalled:
            raise BadInput("--waiting lists jobs in state start that are not stalled")
        state, stalled, started = "start", False, False
    return {"state": state, "type": args.type, "labels": labels(args.label),
            "stalled": stalled, "started": started, "worker": args.worker,
            "name_prefix": args.name_prefix, "limit": args.limit}


def run_list(args: argparse.Namespace, client: Client) -> int:
    if args.watch:
        if args.all:
            raise BadInput("--watch shows one page: use --limit, not --all")
        if not 0 < args.interval <= 60:
            raise BadInput("--interval is more than 0 and at most 60 seconds")
        from karmchari_client.live_list import watch_listing

        def read_page() -> Json:
            return client.list(**list_filters(args), cursor=args.cursor)
        return watch_listing(args, client, read_page, lambda jobs: table(
            JOB_HEADERS, [job_row(job) for job in jobs]))
    filters = list_filters(args)
    return print_pages(args, lambda cursor: client.list(**filters, cursor=cursor), "jobs",
                       JOB_HEADERS, job_row)


def print_pages(args: argparse.Namespace, read_page: Callable[[str | None], Json], what: str,
                headers: list[str], row: Callable[[Json], list[str]],
                also: Callable[[], Json] | None = None) -> int:
    """A listing's page from ``--cursor`` on (every page after it with
    ``--all``), read with ``read_page(cursor)``: ``what`` names the answer's
    list ("jobs", "workers"). Printed as JSON, or as a table with the next
    page's cursor on stderr; ``also()``: more fields of the JSON, once every
    page is read."""
    items: list[Json] = []
    cursor = args.cursor
    while True:
        page = read_page(cursor)
        items += page[what]
        cursor = page["next_cursor"]
        if not args.all or cursor is None:
            break
    if args.json:
        print_json({what: items, "next_cursor": cursor, **(also() if also else {})})
        return EXIT_OK
    if items:
        print(table(headers, [row(item) for item in items]))
    else:
        print(f"no {what}", file=sys.stderr)
    if cursor is not None:
        print(f"more {what}: add --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def run_history(args: argparse.Namespace, client: Client) -> int:
    entries = client.history(args.job_id)
    if args.json:
        print_json(entries)
        return EXIT_OK
    rows = [[str(e["version"]), local_time(e["at"]), e["command"], e["from"] or "-", e["to"],
             e["actor"] or "-", e["reason"]] for e in entries]
    print(table(["VERSION", "AT", "COMMAND", "FROM", "TO", "ACTOR", "REASON"], rows))
    return EXIT_OK


def run_heartbeat(args: argparse.Namespace, client: Client) -> int:
    answer = client.heartbeat(args.job_id, worker=args.worker, progress=args.progress,
                              message=args.message, observed_state=args.observed_state)
    if args.json:
        print_json(answer)
    else:
        print(answer["state"])
    return STATE_EXIT.get(answer["state"], EXIT_ERROR)


def run_delete(args: argparse.Namespace, client: Client) -> int:
    client.delete(args.job_id)
    print(f"{args.job_id} deleted")
    return EXIT_OK


def run_rerun(args: argparse.Namespace, client: Client) -> int:
    job = client.rerun(args.job_id, idempotency_key=args.idempotency_key)
    if args.json:
        print_json(job)
    else:
        print(job["id"])
    return EXIT_OK


WORKER_HEADERS = ["NAME", "LAST HEARTBEAT", "STALLED", "JOBS"]


def worker_row(worker: Json, stalled_exact: bool = True) -> list[str]:
    """One line of ``karmchari workers``; a stalled count the service could
    not finish counting (``stalled_exact`` false) is shown as ``N+``."""
    jobs = ", ".join(f"{state} {count}" for state, count in worker.get("jobs", {}).items()
                     if count)
    stalled = str(worker.get("stalled", 0)) + ("" if stalled_exact else "+")
    return [worker["name"], local_time(worker.get("last_heartbeat_at")), stalled, jobs]


def run_workers(args: argparse.Namespace, client: Client) -> int:
    exact = True   # every page's stalled counts were complete

    def read_page(cursor: str | None) -> Json:
        nonlocal exact
        page = client.workers(limit=args.limit, cursor=cursor)
        exact = exact and page.get("stalled_exact", True)
        return page
    return print_pages(args, read_page, "workers", WORKER_HEADERS,
                       lambda worker: worker_row(worker, exact),
                       also=lambda: {"stalled_exact": exact})
