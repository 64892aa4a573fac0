"""The dashboard in a real browser: headless Chromium (Debian's package, driven
by Playwright) against ``karmchari serve`` and a real Redis, with auth on.

Each test registers its own jobs under a label of its own, so the tests share
one service; the overview test counts everything and gets a service of its own.
Without Chromium or Playwright these tests are skipped, except under CI=true,
where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid

import pytest
import redis

from karmchari_client import ApiError, Client, JobKilled, Worker
from tests.browser import BrowserMissing, chromium_path, launch
from tests.servers import ServiceProcess

pytestmark = pytest.mark.browser

ADMIN, OPERATOR, READER = ("admin-token-1-c9e8f7a6", "operator-token-1-b5d4",
                           "reader-token-1-a3f2e1d0")
TOKENS = f"root:admin:{ADMIN},ops:operator:{OPERATOR},viewer:reader:{READER}"
HOSTILE = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000  # generous bound on what should take milliseconds


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    try:
        chromium_path()
    except BrowserMissing as error:
        _unavailable(str(error))
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = launch(playwright)
    yield chromium
    chromium.close()


def _start_service(redis_url: str, prefix: str) -> ServiceProcess:
    # Each page holds one watch; a closed page's watch waits out its time on the
    # server, so the tests leave room for many.
    return ServiceProcess("--redis-url", redis_url, "--threads", "40",
                          env={"KARMCHARI_KEY_PREFIX": prefix, "KARMCHARI_TOKENS": TOKENS,
                               "KARMCHARI_MAX_WAITERS": "32"}).start()


def _drop_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def service(redis_url):
    prefix = "ui" + uuid.uuid4().hex[:10]
    running = _start_service(redis_url, prefix)
    yield running
    running.stop()
    _drop_prefix(redis_url, prefix)


@pytest.fixture
def api(service):
    client = Client(service.url, token=ADMIN)
    yield client
    client.close()


@pytest.fixture
def tag():
    """A label value of this test's own jobs."""
    return uuid.uuid4().hex[:8]


class Watched:
    """A page, and what must never happen on it: an alert or another dialog
    the page did not mean to open, an uncaught script error."""

    def __init__(self, page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _on_dialog(self, dialog) -> None:
        self.problems.append(f"{dialog.type} dialog: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def open_page(browser, service):
    """Opens the dashboard at a hash (``#/…``), signed in with ``token`` (put in
    sessionStorage, as the sign-in form does), or signed out with None."""
    contexts = []
    watched = []

    def opener(hash_: str = "#/", token: str | None = OPERATOR, width: int = 1280,
               timezone: str | None = None, api_route=None):
        context = browser.new_context(viewport={"width": width, "height": 900},
                                      timezone_id=timezone)
        contexts.append(context)
        if api_route is not None:
            # Stands between the page and the API (as an older service would answer).
            context.route(f"{service.url}/v1/jobs**", api_route)
        if token:
            context.add_init_script(
                f"sessionStorage.setItem('karmchari.token', {json.dumps(token)})")
        page = context.new_page()
        watched.append(Watched(page))
        page.goto(f"{service.url}/ui/{hash_}")
        return page

    yield opener
    for context in contexts:
        context.close()
    assert [p for w in watched for p in w.problems] == []


def rows(page):
    return page.locator("#job-rows tr")


def row(page, job_id: str):
    return page.locator(f'#job-rows tr[data-id="{job_id}"]')


def register(api, count: int, tag: str, **fields) -> list[str]:
    return [api.register(fields.get("type", "export"), name=fields.get("name", f"job {i}"),
                         labels={"run": tag, **fields.get("labels", {})})["id"]
            for i in range(count)]


# -- the overview -------------------------------------------------------------

@pytest.fixture
def counted_service(redis_url):
    prefix = "ui" + uuid.uuid4().hex[:10]
    running = _start_service(redis_url, prefix)
    yield running
    running.stop()
    _drop_prefix(redis_url, prefix)


def test_overview_shows_the_counts(browser, counted_service):
    """The overview speaks the rows' words, each count is the rows its link
    shows, and the counts add up to the total."""
    from playwright.sync_api import expect

    api = Client(counted_service.url, token=ADMIN)
    first = api.register("upload", labels={"team": "red"})["id"]
    context = browser.new_context()
    context.add_init_script(f"sessionStorage.setItem('karmchari.token', {json.dumps(READER)})")
    page = context.new_page()
    # First paint: the cards say they are loading (the counts are held back).
    held: list = []
    page.route("**/v1/stats", lambda route: held.append(route))
    page.goto(f"{counted_service.url}/ui/")
    expect(page.locator("#state-counts")).to_have_text("Loading…", timeout=WAIT_MS)
    expect(page.locator("#chart")).to_have_text("Loading…")
    expect(page.locator("#total")).to_be_hidden()
    expect(page.locator(".overview")).to_have_attribute("aria-busy", "true")
    held[0].continue_()
    page.unroute("**/v1/stats")
    expect(page.locator("#total-count")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator(".overview")).not_to_have_attribute("aria-busy", "true")
    # One change: no "1 changes".
    expect(page.locator("#chart p")).to_have_text("1 change, at most 1 a minute")

    for _ in range(2):
        api.register("upload", labels={"team": "red"})
    api.heartbeat(first, worker="host-1", progress=10)  # old style: no observed_state
    for _ in range(2):
        api.command(api.register("export", labels={"team": "blue"})["id"], "pause")
    api.command(api.register("teams")["id"], "kill")
    stalled = api.register("teams", heartbeat_timeout=1)["id"]
    _wait_until(lambda: api.get(stalled)["stalled"])
    stats = api.request("GET", "/v1/stats")
    api.close()

    page.reload()
    count = lambda card, name: page.locator(f'#{card} li[data-name="{name}"] .count')  # noqa: E731
    expect(page.locator("#total-count")).to_have_text("7", timeout=WAIT_MS)
    expected = [("waiting for a worker", 2), ("running", 1), ("stalled", 1), ("paused", 2),
                ("killed", 1), ("done", 0), ("failed", 0)]
    for name, number in expected:
        expect(count("state-counts", name)).to_have_text(str(number))
    assert sum(n for _, n in expected) == 7  # the counts add up to the total
    for name, number in [("upload", 3), ("export", 2), ("teams", 2)]:
        expect(count("type-counts", name)).to_have_text(str(number))
    expect(count("label-counts", "team:red")).to_have_text("3")
    expect(count("label-counts", "team:blue")).to_have_text("2")
    # One bar a minute, and the total the service counted.
    minutes = stats["changes_per_minute"]
    expect(page.locator("#chart svg rect")).to_have_count(len(minutes))
    changes = sum(m["count"] for m in minutes)
    assert changes >= 10  # seven registrations and three commands, at least
    expect(page.locator("#chart svg")).to_have_attribute(
        "aria-label", re.compile(rf"^{changes} changes "))
    # Each count links to the rows it counts, which use the same words.
    statuses = {"waiting for a worker": {"waiting for a worker"}, "running": {"running"},
                "stalled": {"stalled"}, "paused": {"paused"}, "killed": {"killed"}}
    for name, number in expected:
        page.goto(f"{counted_service.url}/ui/#/")
        count("state-counts", name).locator("xpath=..").get_by_role("link").click()
        if name in ("waiting for a worker", "running"):   # the filter form shows it
            expect(page.locator("#filter-started")).to_have_value(
                "false" if name.startswith("waiting") else "true", timeout=WAIT_MS)
        if number:
            expect(rows(page)).to_have_count(number, timeout=WAIT_MS)
            shown = page.locator("#job-rows td.status").all_inner_texts()
            assert set(shown) == statuses[name], (name, shown)
        else:
            expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
    context.close()


def _wait_until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- the jobs table -----------------------------------------------------------

def test_filters_and_cursor_paging(open_page, api, tag):
    from playwright.sync_api import expect

    ids = register(api, 55, tag, type="upload")
    for job_id in ids[:5]:
        api.command(job_id, "pause")
    page = open_page()
    page.get_by_label("Label", exact=True).fill(f"run:{tag}")
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(50, timeout=WAIT_MS)
    shown = rows(page).evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert shown == ids[::-1][:50]  # newest first
    assert "label=run" in page.url and "token" not in page.url

    page.get_by_role("button", name="Older").click()
    expect(rows(page)).to_have_count(5)
    assert rows(page).evaluate_all("rows => rows.map(r => r.dataset.id)") == ids[4::-1]
    older = page.get_by_role("button", name="Older")
    expect(older).to_be_disabled()
    # ...and looks it: not the colours of the enabled button, no pointer.
    look = "b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).cursor]"
    disabled_look = older.evaluate(look)
    assert disabled_look[1] == "not-allowed"
    assert disabled_look[0] != page.get_by_role("button", name="Apply").evaluate(look)[0]
    page.get_by_role("button", name="Newest").click()
    expect(rows(page)).to_have_count(50)

    page.get_by_label("Requested state", exact=True).select_option("pause")
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(5)
    expect(page.locator("#job-rows td.requested")).to_have_text(["pause"] * 5)
    page.get_by_label("Type", exact=True).select_option("export")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#empty")).to_be_visible()

    # Search by id opens the job page.
    page.get_by_label("Job id").fill(ids[7])
    page.get_by_label("Job id").press("Enter")
    expect(page.locator("#job-fields [data-field=id]")).to_have_text(ids[7])
    expect(page.locator("#timeline li")).to_have_count(1)


def test_pausing_from_the_ui_waits_for_the_worker(open_page, service, api, tag):
    """"pausing…" until the worker acknowledges with observed_state, then "paused"."""
    from playwright.sync_api import expect

    ready, go = threading.Event(), threading.Event()
    box: dict = {}

    def run_job() -> None:
        try:
            with Worker.register("export", service.url, token=ADMIN, name="nightly export",
                                 labels={"run": tag}, worker_name="host-7",
                                 heartbeat_interval=5) as worker:
                box["id"] = worker.job_id
                worker.checkpoint(progress=40)
                ready.set()
                go.wait(60)
                worker.checkpoint(progress=50)  # blocks while paused: acknowledges it
                while True:
                    worker.checkpoint()
                    go.wait(0.05)
        except JobKilled:
            box["killed"] = True
        except BaseException as error:  # noqa: BLE001 - reported by the test
            box["error"] = error
            ready.set()

    thread = threading.Thread(target=run_job, daemon=True)
    thread.start()
    assert ready.wait(30) and "error" not in box, box
    page = open_page(f"#/?label=run:{tag}")
    job = row(page, box["id"])
    expect(job.locator("td.status")).to_have_text("running", timeout=WAIT_MS)
    expect(job.locator("td.worker")).to_have_text("host-7")

    job.get_by_role("button", name="Pause job nightly export").click()
    dialog = page.locator("#command-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").fill("database maintenance")
    dialog.get_by_role("button", name="Pause").click()
    expect(job.locator("td.status")).to_have_text("pausing…", timeout=WAIT_MS)
    expect(job.locator("td.requested")).to_have_text("pause")

    go.set()  # the worker reaches its checkpoint and acknowledges the pause
    expect(job.locator("td.status")).to_have_text("paused", timeout=WAIT_MS)
    entry = api.history(box["id"])[-1]
    assert (entry["command"], entry["actor"], entry["reason"]) == \
        ("pause", "ops", "database maintenance")

    job.get_by_role("button", name="Resume job nightly export").click()
    dialog.get_by_role("button", name="Resume").click()
    expect(job.locator("td.status")).to_have_text("running", timeout=WAIT_MS)
    job.get_by_role("button", name="Kill job nightly export").click()
    dialog.get_by_role("button", name="Yes, kill").click()
    thread.join(30)
    assert box.get("killed"), box
    expect(job.locator("td.status")).to_have_text("killed", timeout=WAIT_MS)


def test_pending_transitions_only_for_workers_that_report_observed_state(open_page, api, tag):
    """A worker that heartbeats without observed_state (the README's example)
    never answers a command, so its job shows the state itself: never
    "resuming…" while it runs, never "killing…" once killed. A worker that does
    report it shows the transition until it answers, or until it has been
    silent for its heartbeat timeout. A kill is final: never "killing…"."""
    from playwright.sync_api import expect

    old, new, gone = (api.register("export", name=name, labels={"run": tag},
                                   heartbeat_timeout=timeout)["id"]
                      for name, timeout in [("old style", 300), ("new style", 300),
                                            ("new style, then silent", 1)])
    waiting = api.register("export", name="nobody yet", labels={"run": tag})["id"]
    api.heartbeat(old, worker="host-7", progress=40)  # no observed_state, ever
    for job_id in (new, gone):
        api.heartbeat(job_id, worker="host-8", progress=40, observed_state="start")
    page = open_page(f"#/?label=run:{tag}")
    status = lambda job_id: row(page, job_id).locator("td.status")  # noqa: E731
    expect(status(old)).to_have_text("running", timeout=WAIT_MS)
    expect(status(new)).to_have_text("running")
    expect(status(waiting)).to_have_text("waiting for a worker")

    for job_id in (old, new):
        api.command(job_id, "pause")
    expect(status(old)).to_have_text("paused", timeout=WAIT_MS)
    expect(status(new)).to_have_text("pausing…", timeout=WAIT_MS)
    api.heartbeat(new, observed_state="pause")
    expect(status(new)).to_have_text("paused", timeout=WAIT_MS)

    for job_id in (old, new):
        api.command(job_id, "start")
        api.heartbeat(job_id, progress=50)  # both still heartbeat; only one answers
    expect(status(old)).to_have_text("running", timeout=WAIT_MS)
    expect(status(new)).to_have_text("resuming…", timeout=WAIT_MS)
    api.heartbeat(new, observed_state="start")
    expect(status(new)).to_have_text("running", timeout=WAIT_MS)

    # A new-style worker silent past its heartbeat timeout (1 s) is not waited for.
    _wait_until(lambda: api.get(gone)["stalled"])
    api.command(gone, "pause")
    expect(status(gone)).to_have_text("paused", timeout=WAIT_MS)

    # A kill is final: "killed" at once, whether or not the worker answers.
    for job_id in (old, new, gone):
        api.command(job_id, "kill")
    for job_id in (old, new, gone):
        expect(status(job_id)).to_have_text("killed", timeout=WAIT_MS)
    api.heartbeat(new, observed_state="start")  # a late heartbeat changes nothing
    page.wait_for_timeout(1500)  # the acknowledgement checks run once a second
    expect(status(new)).to_have_text("killed")
    api.heartbeat(new, observed_state="kill")
    expect(status(new)).to_have_text("killed")
    expect(page.locator("#job-rows .state.pending")).to_have_count(0)

    # The job page decides the same way (one module does, app/ui/status.js).
    page.locator(f'a[href="#/jobs/{old}"]').click()
    expect(page.locator("#job-title .state")).to_have_text("killed", timeout=WAIT_MS)
    expect(page.locator("#job-fields [data-field='observed state']")).to_have_text("–")
    page.go_back()
    page.locator(f'a[href="#/jobs/{waiting}"]').click()
    expect(page.locator("#job-title .state")).to_have_text("waiting for a worker",
                                                           timeout=WAIT_MS)


def test_times_are_local_iso_with_the_exact_time_on_hover(open_page, api, tag):
    """One convention: the reader's local time in ISO order with its offset, to
    the second; the exact ISO time the API gave on hover."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from playwright.sync_api import expect

    (job_id,) = register(api, 1, tag, name="timed")
    api.heartbeat(job_id, worker="host-1", progress=5)
    job = api.get(job_id)
    page = open_page(f"#/?label=run:{tag}", timezone="Asia/Kolkata")  # +05:30
    age = row(page, job_id).locator("td.age")
    expect(age).to_have_text(re.compile(r"^\d+ s ago$"), timeout=WAIT_MS)
    expect(age).to_have_attribute("title", job["heartbeat_at"])
    page.locator(f'a[href="#/jobs/{job_id}"]').click()
    created = page.locator("#job-fields [data-field=created] time")
    expect(created).to_have_attribute("title", job["created_at"], timeout=WAIT_MS)
    expect(created).to_have_attribute("datetime", job["created_at"])
    local = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00")).astimezone(
        ZoneInfo("Asia/Kolkata"))
    expect(created).to_have_text(local.strftime("%Y-%m-%d %H:%M:%S +05:30"))
    expect(page.locator("#timeline time").first).to_have_attribute("title", job["created_at"])
    expect(page.locator("#job-fields [data-field=heartbeat] time")).to_have_attribute(
        "title", job["heartbeat_at"])


def test_list_updates_when_another_client_kills_a_job(open_page, api, tag):
    from playwright.sync_api import expect

    ids = register(api, 3, tag)
    page = open_page(f"#/?label=run:{tag}")
    expect(rows(page)).to_have_count(3, timeout=WAIT_MS)
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    # Idle, the page waits on its one watch: no request goes out meanwhile.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.wait_for_timeout(2500)
    assert requests == []
    api.command(ids[1], "kill", reason="out of quota")
    # Well before the slow refresh (15 s): the watch brings it.
    expect(row(page, ids[1]).locator("td.requested")).to_have_text("kill", timeout=WAIT_MS)
    expect(row(page, ids[1]).locator("td.status")).to_have_text("killed")
    expect(row(page, ids[0]).locator("td.requested")).to_have_text("start")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    assert all(url.endswith("/v1/watch") for url in requests), requests  # no reload, no storm


def test_kill_asks_for_confirmation_and_records_the_reason(open_page, api, tag):
    from playwright.sync_api import expect

    (job_id,) = register(api, 1, tag, name="to be killed")
    page = open_page(f"#/jobs/{job_id}")
    expect(page.locator("#job-title")).to_contain_text("to be killed", timeout=WAIT_MS)
    page.locator("#job-actions").get_by_role("button", name="Kill").click()
    dialog = page.locator("#command-dialog")
    expect(dialog).to_contain_text("cannot be undone")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert api.get(job_id)["state"] == "start"

    page.locator("#job-actions").get_by_role("button", name="Kill").click()
    dialog.get_by_label("Reason").fill("wrong input file")
    dialog.get_by_role("button", name="Yes, kill").click()
    expect(page.locator("#timeline li")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#timeline li").last).to_contain_text("wrong input file")
    expect(page.locator("#timeline li").last).to_contain_text("ops")
    assert api.get(job_id)["state"] == "kill"


def test_values_from_users_are_shown_as_text(open_page, api, tag):
    from playwright.sync_api import expect

    (job_id,) = register(api, 1, tag, name=HOSTILE, labels={"note": "<script>alert(2)</script>"})
    api.command(job_id, "pause", reason="<img src=y onerror=alert(3)>")
    api.heartbeat(job_id, worker="<b onmouseover=alert(4)>w</b>", observed_state="pause")
    page = open_page(f"#/?label=run:{tag}")
    job = row(page, job_id)
    expect(job.locator("td.name")).to_have_text(HOSTILE, timeout=WAIT_MS)
    expect(job.locator("td.worker")).to_have_text("<b onmouseover=alert(4)>w</b>")
    expect(job.locator(".chip", has_text="note:")).to_have_text("note:<script>alert(2)</script>")
    job.locator("td.worker").hover()
    page.locator(f'a[href="#/jobs/{job_id}"]').click()
    expect(page.locator("#timeline .reason")).to_have_text("<img src=y onerror=alert(3)>",
                                                           timeout=WAIT_MS)
    expect(page.locator("#job-title")).to_contain_text(HOSTILE)
    # Nothing became markup: no image, script or bold element was made from the data.
    assert page.locator("main img, main script, main b").count() == 0
    # (The page's dialog and error listeners fail the test if any alert ran.)


def test_reader_token_sees_no_action_and_the_server_refuses_anyway(open_page, api, tag):
    from playwright.sync_api import expect

    (job_id,) = register(api, 1, tag, name="read only")
    page = open_page(f"#/?label=run:{tag}", token=None)
    login = page.locator("#login-dialog")
    expect(login).to_be_visible(timeout=WAIT_MS)
    login.get_by_label("Token").fill("not-a-token")
    login.get_by_role("button", name="Sign in").click()
    expect(login.locator("#login-error")).to_have_text("This token is not accepted.")
    login.get_by_label("Token").fill(READER)
    login.get_by_role("button", name="Sign in").click()
    expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#who")).to_have_text("viewer (reader)")
    assert page.evaluate("sessionStorage.getItem('karmchari.token')") == READER
    assert READER not in page.url
    assert page.evaluate("document.cookie") == ""
    expect(page.get_by_role("button", name=re.compile("^(Pause|Resume|Kill)"))).to_have_count(0)
    expect(page.locator("#bulk-bar")).to_be_hidden()
    expect(page.locator(".select-row")).to_have_count(0)
    page.locator(f'a[href="#/jobs/{job_id}"]').click()
    expect(page.locator("#job-fields [data-field=id]")).to_have_text(job_id)
    expect(page.locator("#job-actions")).to_be_hidden()
    status = page.evaluate("""async (id) => (await fetch(`/v1/jobs/${id}/commands`, {
        method: "POST", body: JSON.stringify({command: "pause"}),
        headers: {"Content-Type": "application/json",
                  Authorization: "Bearer " + sessionStorage.getItem("karmchari.token")}
        })).status""", job_id)
    assert status == 403
    assert api.get(job_id)["state"] == "start"


def test_bulk_pause_of_every_job_matching_the_filter(open_page, api, tag):
    from playwright.sync_api import expect

    team = f"a{tag}"  # no other test's job has it
    ids = register(api, 4, tag, labels={"team": team})
    others = register(api, 2, tag, labels={"team": "b"})
    page = open_page(f"#/?label=run:{tag}")
    expect(rows(page)).to_have_count(6, timeout=WAIT_MS)
    page.get_by_label("Label", exact=True).fill(f"team:{team}")  # the form takes one label
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(4, timeout=WAIT_MS)
    page.get_by_role("button", name="Pause all matching").click()
    dialog = page.locator("#command-dialog")
    expect(dialog).to_contain_text(f"Every job with label team:{team}")
    dialog.get_by_label("Reason").fill("team a on hold")
    dialog.get_by_role("button", name="Pause").click()
    expect(page.locator("#notice")).to_contain_text("4 matched: 4 changed", timeout=WAIT_MS)
    expect(page.locator("#job-rows td.requested")).to_have_text(["pause"] * 4)
    assert {api.get(i)["state"] for i in ids} == {"pause"}
    assert {api.get(i)["state"] for i in others} == {"start"}
    assert api.history(ids[0])[-1]["reason"] == "team a on hold"


def test_bulk_resume_of_selected_rows(open_page, api, tag):
    from playwright.sync_api import expect

    ids = register(api, 3, tag, name="selectable")
    for job_id in ids:
        api.command(job_id, "pause")
    page = open_page(f"#/?label=run:{tag}")
    expect(rows(page)).to_have_count(3, timeout=WAIT_MS)
    row(page, ids[0]).get_by_role("checkbox").check()
    row(page, ids[2]).get_by_role("checkbox").check()
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.get_by_role("button", name="Resume selected").click()
    page.locator("#command-dialog").get_by_role("button", name="Resume").click()
    expect(page.locator("#notice")).to_contain_text("2 matched: 2 changed", timeout=WAIT_MS)
    assert [api.get(i)["state"] for i in ids] == ["start", "pause", "start"]
    row(page, ids[1]).get_by_role("checkbox").check()
    page.get_by_role("button", name="Kill selected").click()
    dialog = page.locator("#command-dialog")
    expect(dialog.locator("#command-title")).to_have_text("Kill 1 job")  # not "1 jobs"
    expect(dialog.locator("#command-target")).to_have_text("1 selected job")
    dialog.get_by_role("button", name="Cancel").click()


def test_narrow_window_and_keyboard(open_page, api, tag):
    """On a phone-sized window the table scrolls inside its box, not the page,
    and keeps each job's status in view; the controls are reachable with Tab and have labels."""
    from playwright.sync_api import expect

    register(api, 2, tag, name="small screen")
    page = open_page(f"#/?label=run:{tag}", width=380)
    expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # What a job is doing is on screen without scrolling the table.
    box = rows(page).first.locator("td.status").bounding_box()
    assert box and box["x"] + box["width"] <= 380, box
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select')]
        .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    page.locator("#filter-state").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "filter-type"


# -- workers, search, run again, run time, clean-up (issue 20, API 20) --------

def test_workers_page_links_to_each_workers_jobs(open_page, api, tag):
    from playwright.sync_api import expect

    busy, idle = f"busy-{tag}", f"idle-{tag}"
    ids = register(api, 3, tag, name="worked")
    for job_id in ids[:2]:
        api.heartbeat(job_id, worker=busy, progress=10)
    api.heartbeat(ids[2], worker=idle, progress=10)
    api.command(ids[2], "pause")
    page = open_page("#/workers")
    expect(page.locator("#nav-workers")).to_have_attribute("aria-current", "page")
    worker = page.locator(f'#worker-rows tr[data-worker="{busy}"]')
    expect(worker).to_be_visible(timeout=WAIT_MS)
    expect(worker.locator("td.jobs-by-state")).to_contain_text("2")
    expect(worker.locator("td.last time")).to_have_attribute("title", re.compile(r"^\d{4}-"))
    worker.get_by_role("link", name=busy).click()
    expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    assert set(rows(page).evaluate_all("rows => rows.map(r => r.dataset.id)")) == set(ids[:2])
    expect(page.get_by_label("Worker", exact=True)).to_have_value(busy)
    expect(page.locator("#job-rows td.worker")).to_have_text([busy, busy])


def test_search_by_name_prefix(open_page, api, tag):
    from playwright.sync_api import expect

    wanted = [api.register("export", name=f"nightly-{tag} {i}", labels={"run": tag})["id"]
              for i in range(3)]
    api.register("export", name=f"weekly-{tag}", labels={"run": tag})
    page = open_page()
    page.get_by_label("Name starts with").fill(f"nightly-{tag}")
    page.get_by_label("Name starts with").press("Enter")
    expect(rows(page)).to_have_count(3, timeout=WAIT_MS)
    assert rows(page).evaluate_all("rows => rows.map(r => r.dataset.id)") == wanted[::-1]
    assert f"name_prefix=nightly-{tag}" in page.url
    # Bulk commands filter on state, type, label and stalled only: none is
    # offered for "every job matching" a name, which would act on more.
    expect(page.get_by_role("button", name="Pause all matching")).to_be_disabled()
    expect(page.get_by_role("button", name="Kill all matching")).to_be_disabled()


def test_run_again_from_the_rows_and_the_job_page(open_page, api, tag):
    from playwright.sync_api import expect

    (ended, running) = register(api, 2, tag, name="redo")
    api.command(ended, "kill")
    probe = api.request("POST", f"/v1/jobs/{ended}/rerun")
    page = open_page(f"#/?label=run:{tag}")
    expect(rows(page)).to_have_count(3, timeout=WAIT_MS)
    # Only ended jobs offer it.
    expect(row(page, running).get_by_role("button", name=re.compile("again"))).to_have_count(0)
    button = row(page, ended).get_by_role("button", name="Run job redo again")
    expect(button).to_be_visible()
    button.click()
    expect(rows(page)).to_have_count(4, timeout=WAIT_MS)  # the probe's rerun, and this one
    reruns = [j for j in api.list(labels={"run": tag})["jobs"] if j.get("retry_of") == ended]
    assert len(reruns) == 2 and probe["id"] in {j["id"] for j in reruns}
    assert all((j["name"], j["state"]) == ("redo", "start") for j in reruns)
    # The job page: its reruns link to them; running it again opens the new job.
    page.locator(f'a[href="#/jobs/{ended}"]').click()
    expect(page.locator("#job-fields [data-field='run again as'] a")).to_have_count(
        2, timeout=WAIT_MS)
    page.locator("#job-more").get_by_role("button", name=re.compile("again")).click()
    expect(page.locator("#job-fields [data-field='run again from'] a")).to_have_text(
        ended, timeout=WAIT_MS)


API_20_JOB_FIELDS = ("started_at", "finished_at", "retry_of", "reruns")


def answer_as_before_api_20(route):
    """The service's answer without the job fields API 20 added."""
    response = route.fetch()
    try:
        body = response.json()
    except ValueError:
        route.fulfill(response=response)
        return
    jobs = body.get("jobs", [body]) if isinstance(body, dict) else []
    for job in jobs:
        if isinstance(job, dict):
            for name in API_20_JOB_FIELDS:
                job.pop(name, None)
    route.fulfill(response=response, json=body)


def test_no_run_again_or_run_time_from_a_service_without_them(open_page, api, tag):
    """Before API 20 a job carries neither retry_of nor started_at: no button
    that could only fail, and run times say why they are missing. The page
    talks to this service through a route that drops those fields."""
    from playwright.sync_api import expect

    (ended,) = register(api, 1, tag, name="older service")
    api.command(ended, "done")
    assert "retry_of" in api.get(ended)
    page = open_page(f"#/?label=run:{tag}", api_route=answer_as_before_api_20)
    expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    expect(page.get_by_role("button", name=re.compile("again"))).to_have_count(0)
    expect(row(page, ended).locator("td.run-time .runtime")).to_have_attribute(
        "title", "this service does not report when jobs start")


def test_run_time_in_the_rows_and_the_job_page(open_page, api, tag):
    from playwright.sync_api import expect

    (job_id,) = register(api, 1, tag, name="timed run")
    api.heartbeat(job_id, worker="host-1", progress=50)
    time.sleep(1.2)
    api.command(job_id, "done")
    job = api.get(job_id)
    page = open_page(f"#/?label=run:{tag}")
    cell = row(page, job_id).locator("td.run-time .runtime")
    expect(cell).to_have_text(re.compile(r"^[12] s$"), timeout=WAIT_MS)
    expect(cell).to_have_attribute("title", f"from {job['started_at']} to {job['finished_at']}")
    page.locator(f'a[href="#/jobs/{job_id}"]').click()
    expect(page.locator("#job-fields [data-field='run time']")).to_have_text(
        re.compile(r"^[12] s$"), timeout=WAIT_MS)


def test_overview_shows_run_times_by_type(open_page, api, tag):
    from playwright.sync_api import expect

    job_type = "teams"  # one of the service's types; other tests' jobs may add to it
    job_id = api.register(job_type, name="timed", labels={"run": tag})["id"]
    api.heartbeat(job_id, worker="host-1", progress=10)
    api.command(job_id, "done")
    page = open_page(f"#/?label=run:{tag}")
    card = page.locator("#run-times-card")
    expect(card).to_be_visible(timeout=WAIT_MS)
    stats = api.request("GET", "/v1/stats")["run_times"][job_type]
    line = card.locator(f'tr[data-type="{job_type}"] td')
    expect(line.last).to_have_text(str(stats["count"]))


def test_admin_deletes_an_ended_job_from_its_page_after_confirming(open_page, api, tag):
    from playwright.sync_api import expect

    (ended, running) = register(api, 2, tag, name="old news")
    api.command(ended, "done")
    page = open_page(f"#/jobs/{running}", token=ADMIN)
    expect(page.locator("#job-fields [data-field=id]")).to_have_text(running, timeout=WAIT_MS)
    expect(page.locator("#job-more").get_by_role("button", name="Delete")).to_have_count(0)
    page.goto(page.url.replace(running, ended))
    page.reload()
    expect(page.locator("#job-fields [data-field=id]")).to_have_text(ended, timeout=WAIT_MS)
    page.locator("#job-more").get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog.locator("#confirm-title")).to_have_text("Delete 1 job")
    expect(dialog.locator("#confirm-text")).to_contain_text(ended)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert api.get(ended)["state"] == "done"
    page.locator("#job-more").get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Yes, delete").click()
    expect(page.locator("#notice")).to_have_text("Job old news deleted.", timeout=WAIT_MS)
    expect(page.locator("#list-view")).to_be_visible()
    with pytest.raises(ApiError) as gone:
        api.get(ended)
    assert gone.value.status == 404
    # An operator may not delete: no button.
    operator = open_page(f"#/jobs/{running}")
    expect(operator.locator("#job-fields [data-field=id]")).to_have_text(running,
                                                                         timeout=WAIT_MS)
    expect(operator.locator("#job-more button")).to_have_count(0)


def test_admin_bulk_delete_names_the_count(open_page, api, tag):
    from playwright.sync_api import expect

    ended = register(api, 3, tag, name="finished")
    (running,) = register(api, 1, tag, name="still going")
    for job_id in ended:
        api.command(job_id, "done")
    page = open_page(f"#/?label=run:{tag}", token=ADMIN)
    expect(rows(page)).to_have_count(4, timeout=WAIT_MS)
    # Every job matching a filter only when the filter names a final state.
    expect(page.locator("#delete-matching")).to_be_disabled()
    for job_id in (ended[0], running):
        row(page, job_id).locator(".select-row").check()
    page.locator("#delete-selected").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog.locator("#confirm-title")).to_have_text("Delete 1 job")
    expect(dialog.locator("#confirm-text")).to_contain_text("1 selected job has not ended")
    dialog.get_by_role("button", name="Yes, delete").click()
    expect(rows(page)).to_have_count(3, timeout=WAIT_MS)
    page.get_by_label("Requested state", exact=True).select_option("done")
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    page.locator("#delete-matching").click()
    expect(dialog.locator("#confirm-title")).to_have_text("Delete 2 jobs", timeout=WAIT_MS)
    dialog.get_by_role("button", name="Yes, delete").click()
    expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
    assert [j["id"] for j in api.list(labels={"run": tag})["jobs"]] == [running]
