"""``karmchari list --watch``: the listing, refreshed every ``--interval``
seconds and whenever a job shown changes.

Each refresh reads the page and draws it (``--count N`` stops after N
refreshes, so ``--count 2 --interval 1`` takes about a second). In between it
waits on ``POST /v1/watch`` for the jobs shown, so a change of state appears
at once rather than at the next refresh. Against a service without ``/v1/watch``, or
one that will not watch that many jobs at once, it just reads the page every
interval. Heartbeats do not change a job's version,
so progress shows at the next read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable

from karmchari_client.client import ApiError, Client, Json

CLEAR = "\033[H\033[2J"


def watch_listing(args: argparse.Namespace, client: Client,
                  read_page: Callable[[], Json], draw_table: Callable[[list[Json]], str]) -> int:
    """Runs until Ctrl-C (at once: both waits below are interruptible), or
    until ``--count`` refreshes."""
    on_terminal = sys.stdout.isatty()
    use_watch = True
    refreshes = 0
    try:
        while True:
            page = read_page()
            _draw(args, page, draw_table, on_terminal)
            refreshes += 1
            if args.count and refreshes >= args.count:
                return 0
            versions = {job["id"]: job["version"] for job in page["jobs"]}
            if use_watch and versions:
                try:
                    client.watch(versions, wait=args.interval)
                    continue
                except ApiError as error:
                    # An older service (404, 405) or more jobs than it watches at
                    # once (400, 413, 422): read the page every interval instead.
                    if error.status in (400, 404, 405, 413, 422):
                        use_watch = False
                    elif error.status != 429:       # too many waiting: this round, poll
                        raise
            time.sleep(args.interval)
    except KeyboardInterrupt:
        client.close()
        return 0


def _draw(args: argparse.Namespace, page: Json, draw_table: Callable[[list[Json]], str],
          on_terminal: bool) -> None:
    if args.json:
        # One JSON document per line and drawing, for a reader that follows along.
        print(json.dumps({"jobs": page["jobs"], "next_cursor": page["next_cursor"]},
                         ensure_ascii=False), flush=True)
        return
    now = datetime.datetime.now().strftime("%H:%M:%S")
    more = " (first page; --limit for more)" if page["next_cursor"] else ""
    heading = f"{len(page['jobs'])} jobs at {now}{more}; Ctrl-C to stop"
    table = draw_table(page["jobs"]) if page["jobs"] else "no jobs"
    if on_terminal:
        sys.stdout.write(f"{CLEAR}{heading}\n\n{table}\n")
    else:
        sys.stdout.write(f"{heading}\n{table}\n\n")
    sys.stdout.flush()
