"""``karmchari pause|resume|kill|done|fail``: one job, several, or every job
matching a filter (after a confirmation)."""

from __future__ import annotations

import argparse
import sys

from karmchari_client.cli_common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    STATE_COMMANDS,
    BadInput,
    labels,
)
from karmchari_client.cli_output import print_json
from karmchari_client.client import Client, Json

FILTER_OPTIONS = "--label, --state, --type, --stalled, --started"


def _where(args: argparse.Namespace) -> Json:
    """The filter options of a state command, as POST /v1/jobs/commands takes them."""
    where: Json = {}
    if args.state:
        where["state"] = args.state
    if args.type:
        where["type"] = args.type
    if args.label:
        where["label"] = [f"{k}:{v}" for k, v in labels(args.label).items()]
    if args.stalled is not None:
        where["stalled"] = args.stalled
    if args.started is not None:
        where["started"] = args.started
    return where


def _describe(where: Json) -> str:
    parts = [f"state {where['state']}" if "state" in where else "",
             f"type {where['type']}" if "type" in where else "",
             *(f"label {label}" for label in where.get("label", [])),
             {True: "stalled", False: "not stalled", None: ""}[where.get("stalled")],
             {True: "a heartbeat", False: "no heartbeat yet", None: ""}[where.get("started")]]
    return ", ".join(p for p in parts if p)


# Counting the jobs of a filter before the confirmation reads the listing,
# at most this many pages of 500: past them the prompt says "at least".
COUNT_PAGES = 20


def _count_matching(client: Client, where: Json) -> tuple[int, bool]:
    """How many jobs match, and whether that is all of them."""
    labels = dict(label.split(":", 1) for label in where.get("label", []))
    count, cursor = 0, None
    for _ in range(COUNT_PAGES):
        page = client.list(state=where.get("state"), type=where.get("type"), labels=labels,
                           stalled=where.get("stalled"), started=where.get("started"),
                           limit=500, cursor=cursor)
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
        raise BadInput(f"give job ids or filter options ({FILTER_OPTIONS}), not both")
    if not args.job_ids and not where:
        raise BadInput(f"give job ids or filter options ({FILTER_OPTIONS})")
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
        print_json(totals)
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
        print_json(result)
    else:
        job = result["job"]
        change = "" if result["changed"] else " (already)"
        print(f"{job['id']} -- {job['state']}{change}, version {job['version']}")
    return EXIT_OK
