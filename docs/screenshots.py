"""Screenshots of the dashboard for README.md and docs/: ``python docs/screenshots.py``.

Starts a throwaway Redis and ``karmchari serve`` with tokens, registers demo
jobs through the API (workers heartbeating, some paused, killed, finished),
opens the dashboard in headless Chromium (Debian's ``chromium`` package,
through Playwright) and writes, at 1400 px and at a phone's 420 px,
docs/img/overview.png, docs/img/job.png, docs/img/overview-narrow.png and
docs/img/job-narrow.png, and docs/img/workers.png where the service lists
workers (GET /v1/workers) (``--out DIR`` writes them elsewhere, e.g. to compare
before and after a change). Needs the test extra (``pip install -e '.[test]'``)
and ``redis-server``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from karmchari_client import ApiError, Client  # noqa: E402
from tests.browser import launch  # noqa: E402
from tests.servers import RedisProcess, ServiceProcess  # noqa: E402

OUT = ROOT / "docs" / "img"
ADMIN, OPERATOR = "demo-admin-token", "demo-operator-token"
TOKENS = f"deploy-bot:admin:{ADMIN},alice:operator:{OPERATOR}"

WIDTHS = {"": 1400, "-narrow": 420}

# name, type, labels, worker, progress, state after the story, observed state
# (None: an old-style worker, whose heartbeats never carry observed_state)
DEMO = [
    ("nightly export: billing", "export", {"team": "billing", "env": "prod"}, "etl-3", 64, "start", "start"),
    ("nightly export: search index", "export", {"team": "search", "env": "prod"}, "etl-1", 18, "pause", "start"),
    ("upload: customer logos", "upload", {"team": "web"}, "up-7", 92, "start", "start"),
    ("teams sync (EU)", "teams", {"team": "identity", "region": "eu"}, "sync-2", 45, "pause", "pause"),
    ("teams sync (US)", "teams", {"team": "identity", "region": "us"}, "sync-1", 100, "done", "start"),
    ("backfill invoices 2025", "export", {"team": "billing", "env": "prod"}, "etl-2", 37, "kill", "start"),
    ("upload: video thumbnails", "upload", {"team": "web"}, "up-2", 73, "start", None),
    ("cleanup temp files", "upload", {"team": "web"}, "up-3", 55, "kill", None),
    ("reindex archive", "export", {"team": "search"}, "etl-4", 12, "failed", "start"),
    ("upload: avatars", "upload", {"team": "web"}, "", None, "start", ""),
    ("teams sync (APAC)", "teams", {"team": "identity", "region": "apac"}, "sync-3", 81, "start", "start"),
]
REASONS = {"pause": "database maintenance window", "kill": "wrong date range",
           "fail": "disk full on etl-4", "done": ""}


def load_demo(url: str) -> str:
    """Registers the demo jobs; returns the id of the one the job page shows."""
    admin = Client(url, token=ADMIN)
    operator = Client(url, token=OPERATOR)
    shown = ""
    for name, job_type, labels, worker, progress, state, observed in DEMO:
        job_id = admin.register(job_type, name=name, labels=labels, heartbeat_timeout=300)["id"]
        if worker:
            admin.heartbeat(job_id, worker=worker, progress=progress,
                            message=f"{progress}% of the rows",
                            **({} if observed is None else {"observed_state": "start"}))
        if state == "pause":
            operator.command(job_id, "pause", reason=REASONS["pause"])
            if name.startswith("teams sync (EU)"):
                operator.command(job_id, "start", reason="window moved to tonight")
                operator.command(job_id, "pause", reason=REASONS["pause"])
                shown = job_id
        elif state == "kill":
            operator.command(job_id, "kill", reason=REASONS["kill"])
        elif state in ("done", "failed"):
            admin.command(job_id, "done" if state == "done" else "fail",
                          reason=REASONS["done" if state == "done" else "fail"])
        if worker and observed not in (None, "start"):
            admin.heartbeat(job_id, worker=worker, observed_state=observed)
    admin.close()
    operator.close()
    return shown


def lists_workers(url: str) -> bool:
    client = Client(url, token=ADMIN)
    try:
        client.request("GET", "/v1/workers")
    except ApiError:
        return False
    finally:
        client.close()
    return True


def main() -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    redis_server = RedisProcess().start()
    service = ServiceProcess("--redis-url", redis_server.url,
                             env={"KARMCHARI_TOKENS": TOKENS}).start()
    try:
        job_id = load_demo(service.url)
        workers = lists_workers(service.url)
        with sync_playwright() as driver:
            browser = launch(driver)
            for suffix, width in WIDTHS.items():
                # A fixed zone, so the times shown do not depend on the machine.
                context = browser.new_context(viewport={"width": width, "height": 900},
                                              timezone_id="Europe/Berlin", locale="en-GB")
                context.add_init_script(
                    f"sessionStorage.setItem('karmchari.token', {json.dumps(OPERATOR)})")
                page = context.new_page()
                page.goto(f"{service.url}/ui/")
                page.wait_for_function("() => document.body.dataset.ready === 'true'")
                page.wait_for_selector("#state-counts .count")
                written.append(out / f"overview{suffix}.png")
                page.screenshot(path=str(written[-1]), full_page=bool(suffix))
                page.goto(f"{service.url}/ui/#/jobs/{job_id}")
                page.wait_for_selector("#timeline li:nth-child(4)")
                written.append(out / f"job{suffix}.png")
                page.screenshot(path=str(written[-1]), full_page=bool(suffix))
                if workers and not suffix:
                    page.goto(f"{service.url}/ui/#/workers")
                    page.wait_for_selector("#worker-rows tr")
                    written.append(out / "workers.png")
                    page.screenshot(path=str(written[-1]))
                context.close()
            browser.close()
    finally:
        service.stop()
        redis_server.close()
    for path in written:
        print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
