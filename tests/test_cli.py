"""The ``karmchari`` command-line client, run as a real process against a live
``karmchari serve``."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import threading

import pytest

from karmchari_client.cli import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
)
from tests.servers import ROOT, RedisProcess, ServiceProcess, free_port, karmchari_command
from tests.waiting import long_polls_waiting


def karmchari(*args: str, url: str | None = None, token: str | None = None,
              env: dict[str, str] | None = None,
              answer: str = "") -> subprocess.CompletedProcess:
    """``answer``: what the user types at a confirmation prompt."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("KARMCHARI_URL", "KARMCHARI_TOKEN")}
    if url is not None:
        environ["KARMCHARI_URL"] = url
    if token is not None:
        environ["KARMCHARI_TOKEN"] = token
    environ.update(env or {})
    return subprocess.run([*karmchari_command(), *args], env=environ, cwd=ROOT, input=answer,
                          capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, exit_code: int) -> str:
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("karmchari: ")
    return lines[0]


@pytest.fixture
def url(live_service):
    return live_service.url


def test_register_pause_resume_kill(url):
    job_id = ok(karmchari("register", "teams", "--name", "nightly", url=url)).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert ok(karmchari("pause", job_id, "--reason", "disk full", url=url)).strip() == \
        f"{job_id} -- pause, version 2"
    assert ok(karmchari("pause", job_id, url=url)).strip() == \
        f"{job_id} -- pause (already), version 2"
    assert ok(karmchari("resume", job_id, url=url)).strip() == f"{job_id} -- start, version 3"
    assert ok(karmchari("kill", job_id, url=url)).strip() == f"{job_id} -- kill, version 4"
    job = json.loads(ok(karmchari("get", job_id, "--json", url=url)))
    assert (job["state"], job["version"], job["name"]) == ("kill", 4, "nightly")
    shown = ok(karmchari("get", job_id, url=url))
    assert re.search(r"^state:\s+kill$", shown, re.M)
    assert re.search(r"^name:\s+nightly$", shown, re.M)

    history = json.loads(ok(karmchari("history", job_id, "--json", url=url)))
    assert [(e["command"], e["from"], e["to"]) for e in history] == [
        ("register", "", "start"), ("pause", "start", "pause"), ("start", "pause", "start"),
        ("kill", "start", "kill")]
    table = ok(karmchari("history", job_id, url=url)).splitlines()
    assert table[0].split() == ["VERSION", "AT", "COMMAND", "FROM", "TO", "ACTOR", "REASON"]
    # VERSION, then AT in three words (date, time, offset)
    assert table[2].split()[4:] == ["pause", "start", "pause", "-", "disk", "full"]


def test_times_are_local_iso_with_the_offset_and_raw_in_json(url):
    """The dashboard's convention, in the zone TZ names; -o json keeps the
    API's values."""
    job_id = ok(karmchari("register", "teams", url=url)).strip()
    ok(karmchari("pause", job_id, url=url))
    kolkata = {"TZ": "Asia/Kolkata"}

    def local(iso: str) -> str:
        moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        return (moment + datetime.timedelta(hours=5, minutes=30)).strftime(
            "%Y-%m-%d %H:%M:%S +05:30")

    job = json.loads(ok(karmchari("get", job_id, "-o", "json", url=url, env=kolkata)))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", job["created_at"])
    shown = ok(karmchari("get", job_id, url=url, env=kolkata))
    assert re.search(rf"^created at:\s+{re.escape(local(job['created_at']))}$", shown, re.M)
    assert re.search(rf"^updated at:\s+{re.escape(local(job['updated_at']))}$", shown, re.M)

    listed = ok(karmchari("list", url=url, env=kolkata)).splitlines()[1]
    assert listed.split()[:3] == [job_id, "teams", "pause"]
    assert listed.endswith(f"  {local(job['updated_at'])}")  # no name: last column
    raw = json.loads(ok(karmchari("list", "-o", "json", url=url, env=kolkata)))
    assert raw["jobs"][0]["updated_at"] == job["updated_at"]

    history = json.loads(ok(karmchari("history", job_id, "-o", "json", url=url, env=kolkata)))
    table = ok(karmchari("history", job_id, url=url, env=kolkata)).splitlines()
    for line, entry in zip(table[1:], history, strict=True):
        assert line.startswith(f"{entry['version']}        {local(entry['at'])}  ")


def test_url_option_and_environment(url):
    assert ok(karmchari("list", "--url", url)) == ""
    assert ok(karmchari("list", url=url)) == ""
    assert karmchari("list", "--url", url).stderr.strip() == "no jobs"


def test_list_table_and_json(url):
    first = ok(karmchari("register", "upload", "--label", "team=data", "--heartbeat-timeout",
                         "60", url=url)).strip()
    second = ok(karmchari("register", "export", "--name", "report", url=url)).strip()
    ok(karmchari("pause", second, url=url))
    subprocess.run(["curl", "-sS", "-o", os.devnull, "-X", "POST",
                    "-H", "Content-Type: application/json",
                    "-d", '{"observed_state": "start", "progress": 40, "worker": "host-1"}',
                    f"{url}/v1/jobs/{first}/heartbeat"], check=True, timeout=30)

    lines = ok(karmchari("list", url=url)).splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATE", "OBSERVED", "STALLED", "PROGRESS",
                                "WORKER", "UPDATED", "NAME"]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [second, first]  # newest first
    assert rows[0][1:4] == ["export", "pause", "-"]
    assert rows[0][-1] == "report"
    assert rows[1][1:6] == ["upload", "start", "start", "40%", "host-1"]

    listed = json.loads(ok(karmchari("list", "--json", url=url)))
    assert [j["id"] for j in listed["jobs"]] == [second, first]
    assert listed["next_cursor"] is None
    assert listed["jobs"][1]["observed_state"] == "start"
    assert listed["jobs"][1]["stalled"] is False

    def ids(*filters):
        return [j["id"] for j in json.loads(ok(karmchari("list", "--json", *filters,
                                                         url=url)))["jobs"]]

    assert ids("--state", "pause") == [second]
    assert ids("--type", "upload") == [first]
    assert ids("--label", "team=data") == [first]
    assert ids("--stalled") == []
    assert ids("--not-stalled") == [second, first]


def test_list_pages_with_cursor_and_all(url):
    ids = [ok(karmchari("register", "teams", url=url)).strip() for _ in range(3)]
    page = karmchari("list", "--limit", "2", url=url)
    assert [line.split()[0] for line in ok(page).splitlines()[1:]] == ids[::-1][:2]
    cursor = re.fullmatch(r"more jobs: add --cursor (\S+)\n", page.stderr).group(1)
    rest = json.loads(ok(karmchari("list", "--json", "--limit", "2", "--cursor", cursor,
                                   url=url)))
    assert [j["id"] for j in rest["jobs"]] == ids[:1]
    every = json.loads(ok(karmchari("list", "--json", "--limit", "1", "--all", url=url)))
    assert [j["id"] for j in every["jobs"]] == ids[::-1]


def test_done_fail_and_delete(url):
    done = ok(karmchari("register", "teams", url=url)).strip()
    failed = ok(karmchari("register", "teams", url=url)).strip()
    result = json.loads(ok(karmchari("done", done, "--json", url=url)))
    assert (result["changed"], result["job"]["state"]) == (True, "done")
    assert ok(karmchari("fail", failed, url=url)).startswith(f"{failed} -- failed")
    assert ok(karmchari("delete", done, url=url)).strip() == f"{done} deleted"
    one_line_error(karmchari("get", done, url=url), EXIT_NOT_FOUND)


def test_if_match(url):
    job_id = ok(karmchari("register", "teams", url=url)).strip()
    ok(karmchari("pause", job_id, "--if-match", "1", url=url))
    line = one_line_error(karmchari("kill", job_id, "--if-match", "1", url=url), EXIT_REFUSED)
    assert line == f"karmchari: job {job_id} is at version 2, not 1: nothing changed"
    assert json.loads(ok(karmchari("get", job_id, "--json", url=url)))["state"] == "pause"


def test_unknown_job(url):
    missing = "f" * 32
    for args in (("get", missing), ("pause", missing), ("history", missing),
                 ("delete", missing)):
        assert one_line_error(karmchari(*args, url=url), EXIT_NOT_FOUND) == \
            f"karmchari: no job {missing}"


def test_refused_transition(url):
    job_id = ok(karmchari("register", "teams", url=url)).strip()
    ok(karmchari("kill", job_id, url=url))
    assert one_line_error(karmchari("resume", job_id, url=url), EXIT_REFUSED) == \
        f"karmchari: cannot resume job {job_id}: it is in state kill"
    running = ok(karmchari("register", "teams", url=url)).strip()
    assert one_line_error(karmchari("delete", running, url=url), EXIT_REFUSED) == \
        f"karmchari: cannot delete job {running}: it is in state start"


BAD_INPUT = [
    ("register", "nope"),
    ("register", "teams", "--label", "bad key=v"),
    ("register", "teams", "--label", "k=1", "--label", "k=2"),
    ("register", "teams", "--heartbeat-timeout", "-5"),
    ("list", "--type", "nope"),
    ("list", "--limit", "0"),
    ("list", "--cursor", "garbage!"),
]


def test_bad_input_refused_by_the_service(url):
    for args in BAD_INPUT:
        line = one_line_error(karmchari(*args, url=url), EXIT_BAD_INPUT)
        assert "Traceback" not in line
    assert ok(karmchari("list", url=url)) == ""  # nothing was registered


@pytest.mark.parametrize("args", [
    ("get", "not-an-id"),
    ("pause", "ABCDEF" * 6),
    ("register", "teams", "--label", "novalue"),
    ("list", "--state", "sleeping"),
    ("list", "--stalled", "--not-stalled"),
    ("frobnicate",),
])
def test_bad_command_line_is_refused_before_any_request(args):
    result = karmchari(*args, url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert "error:" in result.stderr.splitlines()[-1]


def states(url: str, **filters: str) -> list[str]:
    args = [a for name, value in filters.items() for a in (f"--{name}", value)]
    return sorted(j["state"] for j in json.loads(ok(karmchari("list", "--all", "--json", *args,
                                                              url=url)))["jobs"])


def test_pause_and_resume_every_job_of_a_label_after_confirmation(url):
    team_a = [ok(karmchari("register", "teams", "--label", "team=a", url=url)).strip()
              for _ in range(3)]
    ok(karmchari("register", "teams", "--label", "team=b", url=url))

    declined = karmchari("pause", "--label", "team:a", url=url, answer="n\n")
    assert declined.returncode == 0 and declined.stdout == ""
    assert "pause 3 jobs matching label team:a? [y/N]" in declined.stderr
    assert "[y/N] \nnothing changed (answer y, or pass --yes)" in declined.stderr
    assert states(url) == ["start"] * 4

    done = karmchari("pause", "--label", "team:a", "--reason", "freeze", url=url,
                     answer="y\n")
    assert done.stdout.strip() == "3 matched: 3 changed, 0 unchanged, 0 refused", done.stderr
    assert states(url, label="team=a") == ["pause"] * 3
    assert states(url, label="team=b") == ["start"]
    history = json.loads(ok(karmchari("history", team_a[0], "--json", url=url)))
    assert (history[-1]["to"], history[-1]["reason"]) == ("pause", "freeze")

    # No answer (end of input) is no.
    assert karmchari("resume", "--label", "team=a", url=url).stdout == ""
    counts = json.loads(ok(karmchari("resume", "--label", "team=a", "--state", "pause",
                                     "--type", "teams", "--yes", "--json", url=url)))
    assert counts == {"matched": 3, "changed": 3, "unchanged": 0, "refused": 0, "not_found": 0}
    assert states(url) == ["start"] * 4


def test_kill_by_ids_and_a_filter_matching_nothing(url):
    ids = [ok(karmchari("register", "export", url=url)).strip() for _ in range(2)]
    unknown = "f" * 32
    result = karmchari("kill", *ids, unknown, url=url, answer="y\n")
    assert "kill 3 jobs? [y/N]" in result.stderr
    assert result.stdout.strip() == \
        "2 matched: 2 changed, 0 unchanged, 0 refused, 1 not found"
    assert result.returncode == EXIT_NOT_FOUND
    result = karmchari("resume", *ids, "--yes", url=url)
    assert result.stdout.strip() == "2 matched: 0 changed, 0 unchanged, 2 refused, 0 not found"
    assert result.returncode == EXIT_REFUSED

    nothing = karmchari("kill", "--label", "team:nobody", url=url)
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert "no job matches label team:nobody" in nothing.stderr


@pytest.mark.parametrize("args", [
    ("pause",),
    ("pause", "a" * 32, "--label", "team:a"),
    ("pause", "--label", "team:a", "--if-match", "2", "--yes"),
    ("kill", "--label", "team:a", "--label", "team:b", "--yes"),
])
def test_bulk_command_lines_that_cannot_work(url, args):
    one_line_error(karmchari(*args, url=url), EXIT_BAD_INPUT)


def test_get_waits_for_a_change(url):
    job_id = ok(karmchari("register", "teams", url=url)).strip()
    same = json.loads(ok(karmchari("get", job_id, "--wait", "0.2", "--version", "1", "--json",
                                   url=url)))
    assert same["version"] == 1
    ok(karmchari("pause", job_id, url=url))
    changed = json.loads(ok(karmchari("get", job_id, "--wait", "30", "--version", "1",
                                      "--json", url=url)))
    assert (changed["state"], changed["version"]) == ("pause", 2)
    one_line_error(karmchari("get", job_id, "--version", "1", url=url), EXIT_BAD_INPUT)


def test_get_several_jobs_in_one_request_and_wait_for_any_of_them(url):
    ids = [ok(karmchari("register", "teams", url=url)).strip() for _ in range(3)]
    shown = json.loads(ok(karmchari("get", *ids, "--json", url=url)))
    assert [(j["id"], j["state"]) for j in shown] == [(i, "start") for i in ids]
    ok(karmchari("pause", ids[1], url=url))

    def kill_soon():
        long_polls_waiting(url)  # the get below waits (a watch of the three)
        ok(karmchari("kill", ids[2], url=url))

    killer = threading.Thread(target=kill_soon)
    killer.start()
    after = json.loads(ok(karmchari("get", *ids, "--wait", "30", "--json", url=url)))
    killer.join()
    assert [j["state"] for j in after] == ["start", "pause", "kill"]
    text = ok(karmchari("get", ids[0], ids[1], url=url))
    assert text.count("\nstate:") == 2 and re.search(rf"^id: +{ids[1]}$", text, re.M)
    missing = "0" * 32
    assert missing in one_line_error(karmchari("get", ids[0], missing, url=url),
                                     EXIT_NOT_FOUND)
    one_line_error(karmchari("get", *ids, "--wait", "1", "--version", "1", url=url),
                   EXIT_BAD_INPUT)


def test_bad_url():
    assert one_line_error(karmchari("list", "--url", "ftp://example.org"), EXIT_BAD_INPUT) == \
        "karmchari: not an http(s) URL: 'ftp://example.org'"


def test_service_down():
    down = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(karmchari("list", url=down), EXIT_UNAVAILABLE)
    assert line.startswith(f"karmchari: cannot reach the service at {down}: ")
    assert "refused" in line.lower()
    one_line_error(karmchari("register", "teams", "--url", down), EXIT_UNAVAILABLE)


def test_service_up_but_redis_down_is_unavailable():
    redis_server = RedisProcess().start()
    service = ServiceProcess("--redis-url", redis_server.url,
                             "--redis-socket-timeout", "0.5").start()
    try:
        job_id = ok(karmchari("register", "teams", url=service.url)).strip()
        redis_server.stop()
        line = one_line_error(karmchari("get", job_id, url=service.url), EXIT_UNAVAILABLE)
        assert line.startswith(f"karmchari: service at {service.url} is unavailable: ")
    finally:
        service.stop()
        redis_server.close()


def test_token_option_and_environment(redis_url, key_prefix):
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix,
                                  "KARMCHARI_TOKENS": "ops:operator:op-secret-5f2a9c81,"
                                                      "viewer:reader:read-secret-7d3e1b40,"
                                                      "w1:worker:work-secret-2c4e6a8b"}
                             ).start()
    try:
        url = service.url
        line = one_line_error(karmchari("list", url=url), EXIT_ERROR)
        assert line.startswith("karmchari: 401 ")
        assert "no token given: set KARMCHARI_TOKEN or pass --token" in line
        unknown = one_line_error(karmchari("list", url=url, token="not-a-known-token-123"),
                                 EXIT_ERROR)
        assert "the token given is not known there" in unknown
        job_id = ok(karmchari("register", "teams", "--token", "op-secret-5f2a9c81",
                              url=url)).strip()
        ok(karmchari("pause", job_id, url=url, token="op-secret-5f2a9c81"))
        refused = one_line_error(karmchari("kill", job_id, url=url,
                                           token="read-secret-7d3e1b40"), EXIT_ERROR)
        assert refused.startswith("karmchari: 403 ")
        assert "role 'reader' may not command this job" in refused
        assert "owner:             -" in ok(karmchari("get", job_id, url=url,
                                                      token="read-secret-7d3e1b40"))
        # A worker token owns what it registers, and may finish only that.
        own = ok(karmchari("register", "teams", url=url, token="work-secret-2c4e6a8b")).strip()
        assert "owner:             w1" in ok(karmchari("get", own, url=url,
                                                       token="work-secret-2c4e6a8b"))
        refused = one_line_error(karmchari("done", job_id, url=url,
                                           token="work-secret-2c4e6a8b"), EXIT_ERROR)
        assert refused.startswith("karmchari: 403 ")
        assert "'w1' may heartbeat and finish only the jobs it registered" in refused
        ok(karmchari("done", own, url=url, token="work-secret-2c4e6a8b"))
        history = json.loads(ok(karmchari("history", job_id, "--json", url=url,
                                          token="read-secret-7d3e1b40")))
        assert [e["actor"] for e in history] == ["ops", "ops"]
    finally:
        service.stop()
