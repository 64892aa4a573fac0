"""The ``karmchari`` command for shell scripts: ``heartbeat`` exit codes,
``--output json`` on every read command, ``list --watch``, and the bash worker
of ``examples/worker.sh``, all against a live ``karmchari serve``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from karmchari_client import Client
from karmchari_client.cli import EXIT_NOT_FOUND, STATE_EXIT
from tests.servers import ROOT, ServiceProcess, karmchari_command
from tests.test_cli import karmchari, ok
from tests.waiting import eventually, long_polls_waiting

BASH_WORKER = ROOT / "examples" / "worker.sh"


def test_heartbeat_prints_the_state_and_exits_with_its_code(url, api):
    job_id = api.register("teams")["id"]
    beat = karmchari("heartbeat", job_id, "--progress", "40", "--message", "table 2 of 5",
                     "--worker", "host-7", url=url)
    assert (beat.returncode, beat.stdout) == (0, "start\n")
    job = api.get(job_id)
    assert (job["progress"], job["message"], job["worker"]) == (40, "table 2 of 5", "host-7")

    api.command(job_id, "pause")
    paused = karmchari("heartbeat", job_id, "--observed-state", "pause", url=url)
    assert (paused.returncode, paused.stdout) == (10, "pause\n")
    assert api.get(job_id)["observed_state"] == "pause"

    api.command(job_id, "kill")
    killed = karmchari("heartbeat", job_id, "--observed-state", "kill", "--output", "json",
                       url=url)
    assert killed.returncode == 11
    assert json.loads(killed.stdout)["state"] == "kill"

    done, failed = api.register("teams")["id"], api.register("teams")["id"]
    api.command(done, "done")
    api.command(failed, "fail")
    assert karmchari("heartbeat", done, url=url).returncode == 12
    assert karmchari("heartbeat", failed, url=url).returncode == 13
    assert STATE_EXIT == {"start": 0, "pause": 10, "kill": 11, "done": 12, "failed": 13}
    missing = karmchari("heartbeat", "0" * 32, url=url)
    assert missing.returncode == EXIT_NOT_FOUND


def test_every_read_command_speaks_json(url, api):
    job_id = api.register("export", name="nightly")["id"]
    api.command(job_id, "pause")
    shown = json.loads(ok(karmchari("get", job_id, "--output", "json", url=url)))
    assert (shown["id"], shown["state"]) == (job_id, "pause")
    listed = json.loads(ok(karmchari("list", "-o", "json", url=url)))
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    history = json.loads(ok(karmchari("history", job_id, "--output", "json", url=url)))
    assert [entry["command"] for entry in history] == ["register", "pause"]
    beat = karmchari("heartbeat", job_id, "--output", "json", url=url)
    assert beat.returncode == 10 and json.loads(beat.stdout)["state"] == "pause"
    # --json stays, as a short form.
    assert json.loads(ok(karmchari("get", job_id, "--json", url=url)))["id"] == job_id
    text = ok(karmchari("get", job_id, "--output", "text", url=url))
    assert re.search(r"^state:\s+pause$", text, re.M)
    for command in ("get", "list", "history", "heartbeat", "register"):
        assert "--output {text,json}" in ok(karmchari(command, "--help"))


def test_help_documents_the_exit_codes():
    shown = ok(karmchari("--help"))
    for line in ("0  success", "3  no such job", "5  service down or unavailable",
                 "10 pause", "11 kill", "12 done, 13 failed"):
        assert line in shown, line


class Follower:
    """``karmchari list --watch --output json`` as a process; its lines as they come."""

    def __init__(self, url: str, *args: str) -> None:
        env = {**os.environ, "KARMCHARI_URL": url}
        self.process = subprocess.Popen([*karmchari_command(), "list", "--watch", "--output",
                                         "json", *args], env=env, cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.drawings: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.drawings.append(json.loads(line))

    def states(self, index: int) -> dict[str, str]:
        return {job["id"]: job["state"] for job in self.drawings[index]["jobs"]}

    def wait_for(self, count: int) -> None:
        eventually(lambda: len(self.drawings) >= count, timeout=30)

    def close(self) -> int:
        code = self.process.wait(30)
        self._reader.join(5)
        return code


def test_list_watch_draws_again_as_jobs_change(url, api):
    first = api.register("teams")["id"]
    # A long interval: the change of state must come through the watch.
    follower = Follower(url, "--interval", "30", "--count", "3")
    follower.wait_for(1)
    assert follower.states(0) == {first: "start"}

    api.command(first, "pause")
    follower.wait_for(2)
    assert follower.states(1) == {first: "pause"}

    api.command(first, "kill")
    assert follower.close() == 0
    assert follower.states(2) == {first: "kill"}


def test_list_watch_shows_new_jobs_at_the_next_read(url, api):
    # Each interval is a refresh: long enough for the job to be registered first.
    follower = Follower(url, "--interval", "2", "--count", "2", "--state", "start")
    follower.wait_for(1)
    assert follower.drawings[0]["jobs"] == []
    job_id = api.register("upload")["id"]
    assert follower.close() == 0
    assert follower.states(1) == {job_id: "start"}


def test_list_watch_count_counts_refreshes_not_changes(url, api):
    """--count 2 --interval 1 on a listing that does not change: two
    refreshes, a second apart, then it exits (it used to wait for a change)."""
    job_id = api.register("teams")["id"]
    started = time.monotonic()
    follower = Follower(url, "--interval", "1", "--count", "2")
    assert follower.close() == 0
    assert 1 <= time.monotonic() - started < 15
    assert [follower.states(0), follower.states(1)] == [{job_id: "start"}] * 2


@pytest.mark.parametrize("jobs", [0, 1])
def test_ctrl_c_stops_list_watch_at_once(url, api, jobs):
    """With a watch in flight (a job shown) or a sleep (none), Ctrl-C ends
    the refreshes at once, quietly."""
    for _ in range(jobs):
        api.register("teams")
    follower = Follower(url, "--interval", "30")
    follower.wait_for(1)
    if jobs:
        long_polls_waiting(url)
    started = time.monotonic()
    follower.process.send_signal(signal.SIGINT)
    assert follower.close() == 0
    assert time.monotonic() - started < 1.5
    assert follower.process.stderr.read() == ""


def test_list_watch_reads_the_page_where_the_service_will_not_watch(redis_url, key_prefix):
    """A service that watches at most one job at a time refuses the watch of
    two: the listing falls back to reading the page every interval."""
    service = ServiceProcess("--redis-url", redis_url, "--max-watch-jobs", "1",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    client = Client(service.url)
    try:
        first, second = client.register("teams")["id"], client.register("teams")["id"]
        follower = Follower(service.url, "--interval", "0.3", "--count", "2")
        follower.wait_for(1)
        assert follower.states(0) == {first: "start", second: "start"}
        client.command(first, "pause")
        assert follower.close() == 0
        assert follower.states(1) == {first: "pause", second: "start"}
    finally:
        client.close()
        service.stop()


def test_list_watch_on_a_terminal_redraws_the_screen(url, api):
    import pty
    import select

    api.register("teams")
    controller, terminal = pty.openpty()
    env = {**os.environ, "KARMCHARI_URL": url}
    process = subprocess.Popen([*karmchari_command(), "list", "--watch", "--count", "1"],
                               env=env, cwd=ROOT, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while select.select([controller], [], [], 30)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(30) == 0
    assert shown.startswith(b"\x1b[H\x1b[2J1 jobs at ")
    assert b"ID" in shown and b"teams" in shown


def test_list_watch_refuses_all(url):
    refused = karmchari("list", "--watch", "--all", url=url)
    assert refused.returncode == 2 and "--limit" in refused.stderr


def run_bash_worker(url: str, **env: str) -> subprocess.Popen:
    # The karmchari command of this Python's environment first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environ = {**os.environ, "PATH": path, "KARMCHARI_URL": url, **env}
    return subprocess.Popen(["bash", str(BASH_WORKER)], env=environ, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class Lines:
    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match:
        return eventually(lambda: next(filter(None, (re.fullmatch(pattern, line)
                                                     for line in self.lines)), None),
                          timeout=60)


def test_bash_worker_runs_to_done(url, api):
    worker = run_bash_worker(url, STEPS="3", STEP_SECONDS="0.05")
    output = Lines(worker)
    assert worker.wait(60) == 0, output.lines
    job_id = output.wait_for(r"job ([0-9a-f]{32})")[1]
    assert output.lines[-1] == "done"
    job = api.get(job_id)
    assert (job["state"], job["progress"]) == ("done", pytest.approx(66, abs=1))


def test_bash_worker_pauses_resumes_and_is_killed(url, api):
    worker = run_bash_worker(url, STEPS="1000", STEP_SECONDS="0.1")
    output = Lines(worker)
    try:
        job_id = output.wait_for(r"job ([0-9a-f]{32})")[1]
        output.wait_for(r"step 2/1000 done")
        api.command(job_id, "pause")
        output.wait_for(r"paused at step \d+")
        eventually(lambda: api.get(job_id)["observed_state"] == "pause", timeout=30)
        api.command(job_id, "start")
        output.wait_for(r"resumed at step \d+")
        api.command(job_id, "kill")
        output.wait_for(r"killed at step \d+: cleaning up")
        assert worker.wait(60) == 0
        eventually(lambda: api.get(job_id)["observed_state"] == "kill", timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


@pytest.mark.parametrize(("signum", "reason", "status"), [
    (signal.SIGINT, "interrupted by SIGINT (Ctrl-C)", 130),
    (signal.SIGTERM, "interrupted by SIGTERM", 143),
])
def test_bash_worker_interrupted_marks_the_job_failed(url, api, signum, reason, status):
    worker = run_bash_worker(url, STEPS="1000", STEP_SECONDS="0.05")
    output = Lines(worker)
    try:
        job_id = output.wait_for(r"job ([0-9a-f]{32})")[1]
        output.wait_for(r"step 1/1000 done")
        worker.send_signal(signum)
        assert worker.wait(60) == status
        output.wait_for(re.escape(f"{reason}: the job is marked failed; cleaning up"))
        assert api.get(job_id)["state"] == "failed"
        assert api.history(job_id)[-1]["reason"] == reason
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
