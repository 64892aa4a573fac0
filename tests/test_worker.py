"""The worker side, end to end: ``examples/worker.py`` as a real process and
the ``karmchari_client.worker`` library in-process, against a live
``karmchari serve`` on real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from karmchari_client import Backoff, Client, JobEnded, JobKilled, ServiceUnavailable, Worker
from karmchari_client.heartbeats import Heartbeater
from karmchari_client.watcher import Watcher
from tests.servers import ROOT, ServiceProcess
from tests.waiting import eventually

EXAMPLE = ROOT / "examples" / "worker.py"


class ExampleWorker:
    """``examples/worker.py`` as a subprocess; its output is read as it comes."""

    def __init__(self, url: str, *args: str) -> None:
        # The tree's own client (client/), not an installed one.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")]),
               "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, str(EXAMPLE), "--url", url, *args],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str) -> re.Match:
        return eventually(lambda: re.search(pattern, self.output), timeout=30)

    def steps_done(self) -> int:
        return sum(1 for line in self.lines if re.fullmatch(r"step \d+/\d+ done.*", line))

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def run_example(live_service):
    started: list[ExampleWorker] = []

    def run(*args: str) -> ExampleWorker:
        worker = ExampleWorker(live_service.url, *args)
        started.append(worker)
        return worker

    yield run
    for worker in started:
        worker.stop()


@pytest.fixture
def api(live_service):
    client = Client(live_service.url)
    yield client
    client.close()


# -- examples/worker.py as a process -----------------------------------------------

def test_example_worker_pauses_resumes_and_cleans_up_on_kill(run_example, api):
    # Progress and the acknowledged state travel with the heartbeats: every 0.2 s
    # rather than the default third of the 30 s timeout (10 s per wait below).
    worker = run_example("--type", "teams", "--steps", "1000", "--step-seconds", "0.05",
                         "--heartbeat-interval", "0.2")
    job_id, scratch = worker.wait_for(r"job ([0-9a-f]{32}) running, scratch space (\S+)").groups()
    eventually(lambda: (api.get(job_id)["progress"] or 0) > 0)

    api.command(job_id, "pause")
    eventually(lambda: api.get(job_id)["observed_state"] == "pause")  # acknowledged
    worker.wait_for(r"paused at step \d+")
    paused = api.get(job_id)
    steps = worker.steps_done()
    time.sleep(1.0)  # twenty steps' worth of time
    assert api.get(job_id)["progress"] == paused["progress"]
    assert worker.steps_done() == steps
    assert worker.process.poll() is None

    api.command(job_id, "start")
    eventually(lambda: api.get(job_id)["progress"] > paused["progress"])
    eventually(lambda: api.get(job_id)["observed_state"] == "start")
    worker.wait_for("resumed")

    api.command(job_id, "kill")
    assert worker.wait() == 0
    assert "killed: cleaning up" in worker.lines
    assert f"removed {scratch}" in worker.lines
    assert not Path(scratch).exists()
    job = api.get(job_id)
    assert (job["state"], job["observed_state"]) == ("kill", "kill")
    assert [e["command"] for e in api.history(job_id)] == ["register", "pause", "start",
                                                            "kill"]


def test_kill_9_of_the_worker_makes_the_job_stalled(run_example, api):
    worker = run_example("--type", "export", "--steps", "1000", "--step-seconds", "0.05",
                         "--heartbeat-timeout", "2")
    job_id = worker.wait_for(r"job ([0-9a-f]{32}) running").group(1)
    time.sleep(3)  # longer than the timeout: the heartbeats keep it alive
    assert api.get(job_id)["stalled"] is False

    os.kill(worker.process.pid, signal.SIGKILL)
    worker.wait()

    eventually(lambda: api.get(job_id)["stalled"])
    job = api.get(job_id)
    assert (job["state"], job["observed_state"]) == ("start", "start")
    assert job_id in {j["id"] for j in api.list(stalled=True, limit=500)["jobs"]}
    assert job_id not in {j["id"] for j in api.list(stalled=False, limit=500)["jobs"]}


def test_example_worker_reports_done(run_example, api):
    worker = run_example("--type", "upload", "--steps", "3", "--step-seconds", "0.01")
    assert worker.wait() == 0
    job_id = re.search(r"job ([0-9a-f]{32}) running", worker.output).group(1)
    job = api.get(job_id)
    assert (job["state"], job["progress"]) == ("done", 100.0)
    assert "done" in worker.lines


def test_example_worker_reports_a_failure(run_example, api):
    worker = run_example("--steps", "5", "--step-seconds", "0.01", "--fail-at", "2")
    assert worker.wait() == 1
    job_id = re.search(r"job ([0-9a-f]{32}) running", worker.output).group(1)
    assert api.get(job_id)["state"] == "failed"
    assert api.history(job_id)[-1]["reason"] == "RuntimeError: step 2 failed on purpose"


@pytest.mark.parametrize(("signum", "reason", "status"), [
    (signal.SIGINT, "interrupted by SIGINT (Ctrl-C)", 130),
    (signal.SIGTERM, "interrupted by SIGTERM", 143),
])
def test_ctrl_c_and_sigterm_stop_the_example_alike(run_example, api, signum, reason, status):
    """Either signal: the job is failed with a reason that says it was
    interrupted (not a failure of the work), the scratch space is removed, and
    the worker exits with a message, no traceback."""
    worker = run_example("--steps", "1000", "--step-seconds", "0.05")
    job_id = worker.wait_for(r"job ([0-9a-f]{32}) running").group(1)
    worker.wait_for(r"step 1/1000 done")
    worker.process.send_signal(signum)
    assert worker.wait() == status
    assert f"{reason}: the job is marked failed" in worker.output
    assert "removed " in worker.output
    assert "Traceback" not in worker.output
    assert api.get(job_id)["state"] == "failed"
    assert api.history(job_id)[-1]["reason"] == reason


def test_sigterm_while_paused_stops_the_example(run_example, api):
    """A worker blocked in checkpoint() on a paused job is interrupted too."""
    worker = run_example("--steps", "1000", "--step-seconds", "0.05")
    job_id = worker.wait_for(r"job ([0-9a-f]{32}) running").group(1)
    api.command(job_id, "pause")
    worker.wait_for(r"paused at step")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 143
    assert "Traceback" not in worker.output
    assert api.history(job_id)[-1]["reason"] == "interrupted by SIGTERM"


def test_example_worker_with_an_unknown_job_exits_2(run_example):
    worker = run_example("--job-id", "0" * 32)
    assert worker.wait() == 2
    assert "cannot run job: 404" in worker.output


# -- the library in-process -------------------------------------------------------

def worker_threads(job_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(job_id[:8])]


def test_leaving_the_block_normally_reports_done_with_the_last_progress(live_service, api):
    worker = Worker.register("teams", live_service.url, worker_name="unit-1")
    with worker:
        worker.checkpoint(progress=10)
        worker.checkpoint(progress=60, message="almost")
    job = api.get(worker.job_id)
    assert (job["state"], job["progress"], job["message"], job["worker"]) == \
        ("done", 60.0, "almost", "unit-1")
    assert api.history(worker.job_id)[-1]["command"] == "done"
    assert worker_threads(worker.job_id) == []


def test_an_exception_in_the_block_reports_fail_with_the_reason(live_service, api):
    worker = Worker.register("teams", live_service.url)
    with pytest.raises(ValueError), worker:
        raise ValueError("disk full")
    assert api.get(worker.job_id)["state"] == "failed"
    assert api.history(worker.job_id)[-1]["reason"] == "ValueError: disk full"
    assert worker_threads(worker.job_id) == []


def run_checkpoints(worker: Worker, count: int) -> tuple[list[int], list, list]:
    """``count`` threads calling checkpoint() in a loop; returns their step
    counters, the exceptions that ended them, and the threads."""
    steps, ended, threads = [0] * count, [], []

    def loop(i: int) -> None:
        try:
            while True:
                worker.checkpoint(progress=min(steps[i], 100))
                steps[i] += 1
                time.sleep(0.005)
        except JobEnded as error:
            ended.append(error)

    for i in range(count):
        threads.append(threading.Thread(target=loop, args=(i,), daemon=True))
        threads[-1].start()
    return steps, ended, threads


def test_checkpoint_blocks_every_thread_while_paused_and_raises_on_kill(live_service, api):
    worker = Worker.register("teams", live_service.url)
    with pytest.raises(JobKilled), worker:
        steps, ended, threads = run_checkpoints(worker, 3)
        eventually(lambda: all(steps))

        api.command(worker.job_id, "pause")
        eventually(lambda: api.get(worker.job_id)["observed_state"] == "pause")
        eventually(lambda: worker.state == "pause")
        frozen = list(steps)
        time.sleep(0.5)
        assert steps == frozen

        api.command(worker.job_id, "start")
        eventually(lambda: all(now > then for now, then in zip(steps, frozen, strict=True)))
        eventually(lambda: api.get(worker.job_id)["observed_state"] == "start")

        api.command(worker.job_id, "kill")
        for thread in threads:
            thread.join(10)
        assert len(ended) == 3 and all(isinstance(e, JobKilled) for e in ended)
        worker.checkpoint()  # raises JobKilled in this thread too
    job = api.get(worker.job_id)
    assert (job["state"], job["observed_state"]) == ("kill", "kill")
    assert api.history(worker.job_id)[-1]["command"] == "kill"  # nothing sent after it
    assert worker_threads(worker.job_id) == []


def test_kill_while_paused_wakes_the_blocked_checkpoint(live_service, api):
    worker = Worker.register("teams", live_service.url)
    with pytest.raises(JobKilled), worker:
        api.command(worker.job_id, "pause")
        eventually(lambda: worker.state == "pause")
        threading.Timer(0.3, api.command, (worker.job_id, "kill")).start()
        worker.checkpoint(progress=5)  # blocks, then raises
    assert api.get(worker.job_id)["observed_state"] == "kill"


def test_a_job_finished_by_someone_else_ends_the_work_quietly(live_service, api):
    worker = Worker.register("teams", live_service.url)
    with pytest.raises(JobEnded) as ended, worker:
        api.command(worker.job_id, "done", reason="finished by hand")
        eventually(lambda: worker.state == "done")
        worker.checkpoint()
    assert not isinstance(ended.value, JobKilled)
    assert ended.value.state == "done"
    assert api.history(worker.job_id)[-1]["reason"] == "finished by hand"


def test_heartbeats_alone_carry_the_commands(live_service, api):
    worker = Worker.register("teams", live_service.url, long_poll=False, heartbeat_interval=0.2)
    with pytest.raises(JobKilled), worker:
        api.command(worker.job_id, "pause")
        eventually(lambda: worker.state == "pause")
        api.command(worker.job_id, "kill")
        worker.checkpoint()
    assert worker_threads(worker.job_id) == []


def gauge(service: ServiceProcess, name: str) -> float:
    with urllib.request.urlopen(service.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def start_workers(url: str, count: int, **options) -> list[Worker]:
    # Heartbeats far apart: within a test, only the watch can bring a command.
    workers = [Worker.register("teams", url, heartbeat_interval=600, **options)
               for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def finish_killed(api: Client, workers: list[Worker]) -> None:
    for worker in workers:
        api.command(worker.job_id, "kill")
    for worker in workers:
        eventually(lambda w=worker: w.state == "kill", timeout=30)
        worker.finish(JobKilled(worker.job_id))


def test_many_workers_in_one_process_share_one_watch(live_service, api):
    workers = start_workers(live_service.url, 40)
    try:
        eventually(lambda: gauge(live_service, "karmchari_watched_jobs") == 40, timeout=30)
        assert gauge(live_service, "karmchari_long_poll_waiters") == 1
        assert Watcher.shared(live_service.url, None).jobs() == 40
        for worker in workers:  # no thread of its own: the heartbeats are shared too
            assert worker_threads(worker.job_id) == []
        assert Heartbeater.shared(live_service.url, None).jobs() == 40

        for worker in workers:
            api.command(worker.job_id, "pause")
        for worker in workers:
            eventually(lambda w=worker: w.state == "pause", timeout=30)
        api.command(workers[3].job_id, "start")
        eventually(lambda: workers[3].state == "start", timeout=30)
        assert [w.state for w in workers].count("pause") == 39
    finally:
        finish_killed(api, workers)
    assert Watcher.shared(live_service.url, None).jobs() == 0
    assert Heartbeater.shared(live_service.url, None).jobs() == 0
    eventually(lambda: gauge(live_service, "karmchari_watched_jobs") == 0, timeout=30)


def test_past_the_services_job_limit_the_jobs_are_split_over_several_watches(redis_url,
                                                                             key_prefix):
    service = ServiceProcess("--redis-url", redis_url, "--max-watch-jobs", "5",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    api = Client(service.url)
    workers = start_workers(service.url, 12)
    try:
        eventually(lambda: gauge(service, "karmchari_watched_jobs") == 12, timeout=30)
        assert gauge(service, "karmchari_long_poll_waiters") == 3
        for worker in workers:
            api.command(worker.job_id, "pause")
        for worker in workers:
            eventually(lambda w=worker: w.state == "pause", timeout=30)
        finish_killed(api, workers)
        # The lanes of jobs gone end; new jobs get lanes again.
        eventually(lambda: gauge(service, "karmchari_long_poll_waiters") <= 1, timeout=60)
        workers = start_workers(service.url, 7)
        eventually(lambda: gauge(service, "karmchari_watched_jobs") == 7, timeout=30)
        assert gauge(service, "karmchari_long_poll_waiters") == 2
        api.command(workers[6].job_id, "pause")
        eventually(lambda: workers[6].state == "pause", timeout=30)
    finally:
        finish_killed(api, [w for w in workers if not w.ended()])
        api.close()
        service.stop()


def test_workers_obey_through_heartbeats_while_the_watch_gets_429(redis_url, key_prefix):
    service = ServiceProcess("--redis-url", redis_url, "--threads", "2",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    api = Client(service.url)
    try:
        # Two request threads: one slot for waiting requests, taken here.
        held = api.register("teams")
        holder = threading.Thread(target=lambda: Client(service.url).get(
            held["id"], wait=60, version=held["version"]), daemon=True)
        holder.start()
        eventually(lambda: gauge(service, "karmchari_long_poll_waiters") == 1)
        workers = [Worker.register("teams", service.url, heartbeat_interval=0.3)
                   for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            api.command(worker.job_id, "pause")
        for worker in workers:
            eventually(lambda w=worker: w.state == "pause")
            api.command(worker.job_id, "kill")
            with pytest.raises(JobKilled):
                worker.checkpoint()
            worker.finish(JobKilled(worker.job_id))
            assert api.get(worker.job_id)["observed_state"] == "kill"
        api.command(held["id"], "kill")
        holder.join(10)
    finally:
        api.close()
        service.stop()


class CountingClient(Client):
    """Counts the requests that found the service away, and the heartbeat
    batches sent (the job ids of each)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.unavailable = 0
        self.batches: list[list[str]] = []

    def request(self, *args, **kwargs):
        try:
            return super().request(*args, **kwargs)
        except ServiceUnavailable:
            self.unavailable += 1
            raise

    def heartbeats(self, reports: list[dict]) -> list[dict]:
        self.batches.append([r["id"] for r in reports])
        return super().heartbeats(reports)


def counting_heartbeats(url: str) -> CountingClient:
    """The process's shared heartbeats for ``url``, sent through a CountingClient."""
    client = CountingClient(url)
    Heartbeater.shared(url, None).client = client
    return client


def test_the_worker_carries_on_across_a_service_restart(redis_url, key_prefix, store):
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    client = counting_heartbeats(service.url)
    try:
        worker = Worker.register("teams", service.url, heartbeat_interval=0.2)
        with worker:
            steps, ended, threads = run_checkpoints(worker, 1)
            eventually(lambda: store.get(worker.job_id).heartbeat_at)

            assert service.stop() == 0
            # A command while this service is down (through another service
            # process on the same Redis): it waits in Redis for the worker.
            store.apply_command(worker.job_id, "pause", reason="while the API was down")
            time.sleep(3)
            assert worker.state == "start"  # nothing learned, work went on
            assert 0 < client.unavailable < 20  # retried with backoff, not in a tight loop

            service.start()  # same port, same Redis
            eventually(lambda: store.get(worker.job_id).observed_state == "pause")
            assert worker.state == "pause"
            frozen = steps[0]
            store.apply_command(worker.job_id, "start")
            eventually(lambda: steps[0] > frozen)
            eventually(lambda: store.get(worker.job_id).observed_state == "start")
        assert store.get(worker.job_id).state == "done"
        threads[0].join(10)
        assert isinstance(ended[0], JobEnded) and ended[0].state == "done"
    finally:
        client.close()
        service.stop()


def test_the_shared_watch_carries_on_across_a_service_restart(redis_url, key_prefix, store):
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    api = Client(service.url)
    workers = start_workers(service.url, 5)
    try:
        eventually(lambda: gauge(service, "karmchari_watched_jobs") == 5, timeout=30)
        assert service.stop() == 0
        store.apply_command(workers[0].job_id, "pause", reason="while the API was down")
        time.sleep(2)
        service.start()  # same port, same Redis
        eventually(lambda: workers[0].state == "pause", timeout=40)
        eventually(lambda: gauge(service, "karmchari_watched_jobs") == 5, timeout=30)
        api.command(workers[1].job_id, "pause")
        eventually(lambda: workers[1].state == "pause", timeout=30)
    finally:
        finish_killed(api, workers)
        api.close()
        service.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_worker_handles_sigterm_only_while_it_runs(live_service, api):
    """In the main thread, a default SIGTERM handler becomes Interrupted while
    a Worker runs, and is the default again once it finished."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    with Worker(live_service.url, api.register("teams")["id"]):
        during = signal.getsignal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    assert (during is not before) == (before is signal.SIG_DFL)
    with Worker(live_service.url, api.register("teams")["id"], handle_sigterm=False):
        assert signal.getsignal(signal.SIGTERM) is before


def test_a_forked_child_starts_without_the_parents_watchers():
    parent = Watcher.shared("http://127.0.0.1:9", None)
    pid = os.fork()
    if pid == 0:  # the child: a new watcher of its own, with threads that exist here
        os._exit(0 if Watcher.shared("http://127.0.0.1:9", None) is not parent else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert Watcher.shared("http://127.0.0.1:9", None) is parent


# -- backoff ----------------------------------------------------------------------

def test_backoff_grows_exponentially_up_to_a_cap_and_honours_retry_after():
    highest = Backoff(base=0.5, cap=8, rng=lambda: 1.0)
    assert [highest.next() for _ in range(6)] == [0.5, 1, 2, 4, 8, 8]
    lowest = Backoff(base=0.5, cap=8, rng=lambda: 0.0)
    assert [lowest.next() for _ in range(5)] == [0.25, 0.5, 1, 2, 4]  # never near zero
    assert lowest.next(retry_after=30) == 8  # Retry-After is a floor, up to the cap
    lowest.reset()
    assert lowest.next(retry_after=1) == 1
    assert lowest.next(retry_after=1) == 1  # 0.5 drawn, the service asked for 1
