"""How long the dashboard takes to put the first page of jobs on screen, with
many jobs stored (1,000,000 by default).

``python -m bench.ui_first_page`` starts its own Redis, loads the jobs the way
bench/listing.py does (the registerJob script, pipelined), starts ``karmchari
serve`` and opens ``/ui/`` in headless Chromium (Debian's package, through
Playwright). The time measured runs from the start of the navigation to the
frame after the table's 50 rows were inserted (the page marks it
``first-page``): it includes loading the page and its scripts, ``GET
/v1/whoami``, ``GET /v1/jobs?limit=50`` and drawing the rows.

- ``cold``: a new browser context each time, nothing cached;
- ``warm``: reloads in one context (the files revalidate with 304s);
- ``label``: cold, filtered by a label one job in eight has.

Writes bench/results/ui_first_page.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from app.store import JobStore, connect
from bench import RESULTS
from bench.listing import load_jobs
from bench.servers import BenchError, BenchRedis, BenchService
from tests.browser import BrowserMissing, launch

FIRST_PAGE = """() => {
  const mark = performance.getEntriesByName("first-page")[0];
  const api = performance.getEntriesByType("resource").find(r => r.name.includes("/v1/jobs?"));
  return {first_page_ms: mark && mark.startTime, rows: document.querySelectorAll(
    "#job-rows tr").length, api_ms: api && api.duration};
}"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ui_first_page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000,
                        help="jobs stored (default: %(default)s)")
    parser.add_argument("--loads", type=int, default=20,
                        help="page loads per case (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "ui_first_page.json",
                        help="where to write the results (default: %(default)s)")
    return parser.parse_args(argv)


def first_page(page, url: str, reload: bool = False) -> dict:
    if reload:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_function("() => performance.getEntriesByName('first-page').length > 0",
                           timeout=30_000)
    figures = page.evaluate(FIRST_PAGE)
    if figures["rows"] != 50:
        raise BenchError(f"expected 50 rows, the page shows {figures['rows']}")
    return figures


def summary(samples: list[dict]) -> dict:
    times = sorted(s["first_page_ms"] for s in samples)
    api = sorted(s["api_ms"] for s in samples if s["api_ms"] is not None)
    return {"loads": len(times), "p50_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
            "max_ms": round(times[-1], 1),
            "api_p50_ms": round(statistics.median(api), 1) if api else None}


def measure(browser, base_url: str, loads: int) -> dict:
    results = {}
    cold = []
    for _ in range(loads + 1):
        context = browser.new_context()
        cold.append(first_page(context.new_page(), f"{base_url}/ui/"))
        context.close()
    results["cold"] = summary(cold[1:])  # the first load also warms the service up

    context = browser.new_context()
    page = context.new_page()
    first_page(page, f"{base_url}/ui/")
    results["warm"] = summary([first_page(page, "", reload=True) for _ in range(loads)])
    context.close()

    labelled = []
    for _ in range(loads):
        context = browser.new_context()
        labelled.append(first_page(context.new_page(), f"{base_url}/ui/#/?label=team:t3"))
        context.close()
    results["label"] = summary(labelled)
    return results


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    args = parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with BenchRedis() as redis_server:
        store = JobStore(connect(redis_server.url, max_connections=4))
        log(f"loading {args.jobs:,} jobs")
        seconds = load_jobs(store, 0, args.jobs, log)
        log(f"loaded in {seconds:.0f} s")
        with BenchService(redis_server.url) as service, sync_playwright() as driver:
            try:
                browser = launch(driver)
            except BrowserMissing as error:
                raise BenchError(str(error)) from None
            results = measure(browser, service.base_url, args.loads)
            browser.close()
    report = {"jobs": args.jobs, "redis": "unix socket", "measured_at":
              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        sys.exit(f"bench.ui_first_page: {error}")
