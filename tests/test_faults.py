"""Redis faults against real processes (SPEC §5, issue 5): a Redis server the
test controls, and ``karmchari serve`` in front of it. Each fault must give
503 with Retry-After (never a 500, never a hang past the socket timeout), and
the service must recover by itself when Redis does."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from app.store.scripts import load_source
from karmchari_client import Client, ServiceUnavailable
from tests.http_calls import Reply, call
from tests.servers import ROOT, RedisProcess, ServiceProcess, free_port, karmchari_command
from tests.waiting import eventually, long_polls_waiting

pytestmark = pytest.mark.slow

SOCKET_TIMEOUT = 1.0
# A request may wait for one Redis reply and one reconnection; 3x is generous.
HANG_BOUND = 3 * SOCKET_TIMEOUT
POLL_INTERVAL = 1.0  # a long-poll re-reads its job at least this often (ChangeNotifier)


def register(service: ServiceProcess, **fields) -> str:
    reply = call(service.url, "POST", "/v1/jobs", body={"type": "teams", **fields})
    assert reply.status == 201, reply.text
    return reply.json()["id"]


def command(service: ServiceProcess, job_id: str, name: str, **fields) -> Reply:
    return call(service.url, "POST", f"/v1/jobs/{job_id}/commands",
                body={"command": name, **fields})


def history(service: ServiceProcess, job_id: str) -> list[dict]:
    reply = call(service.url, "GET", f"/v1/jobs/{job_id}/history")
    assert reply.status == 200, reply.text
    return reply.json()["entries"]


def assert_valid_path(entries: list[dict]) -> None:
    """Consecutive versions (from 1 with its registration, unless the history
    cap dropped the oldest), each change starting where the one before ended."""
    first = entries[0]["version"]
    assert [e["version"] for e in entries] == list(range(first, first + len(entries))), entries
    assert (first == 1) == (entries[0]["command"] == "register"), entries
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["from"] == before["to"], entries
        assert after["from"] != after["to"], entries


def every_endpoint(job_id: str, finished_id: str) -> list[tuple[str, str, dict]]:
    """(method, path, arguments of ``call``) of every route that needs Redis."""
    return [
        ("POST", "/registerJob", {"form": {"type": "teams"}}),
        ("GET", f"/jobState?id={job_id}", {}),
        ("POST", "/jobState", {"form": {"id": job_id, "command": "pause"}}),
        ("POST", "/v1/jobs", {"body": {"type": "teams", "labels": {"team": "a"}}}),
        ("POST", "/v1/jobs", {"body": {"type": "teams"},
                              "headers": {"Idempotency-Key": "fault-1"}}),
        ("GET", "/v1/jobs", {}),
        ("GET", "/v1/jobs?state=start&limit=5", {}),
        ("GET", f"/v1/jobs/{job_id}", {}),
        ("GET", f"/v1/jobs/{job_id}?wait=2&version=1", {}),
        ("POST", f"/v1/jobs/{job_id}/commands", {"body": {"command": "pause"}}),
        ("GET", f"/v1/jobs/{job_id}/history", {}),
        ("DELETE", f"/v1/jobs/{finished_id}", {}),
        ("POST", f"/v1/jobs/{job_id}/heartbeat", {"body": {"progress": 0.5}}),
        ("POST", "/v1/heartbeats", {"body": {"heartbeats": [{"id": job_id, "progress": 0.5}]}}),
        ("GET", "/v1/jobs?worker=w1&limit=5", {}),
        ("GET", "/v1/jobs?name_prefix=n&limit=5", {}),
        ("GET", "/v1/workers", {}),
        ("GET", "/v1/stats", {}),
        ("POST", f"/v1/jobs/{finished_id}/rerun", {}),
    ]


def is_write(method: str, path: str) -> bool:
    return method in ("POST", "DELETE") and path != "/v1/watch"


def assert_unavailable(reply: Reply, method: str, path: str,
                       codes: tuple[str, ...] = ("store_unavailable",)) -> None:
    """503 with Retry-After; on the v1 API with one of ``codes``."""
    where = f"{method} {path}"
    assert reply.status == 503, (where, reply.status, reply.text)
    assert reply.headers.get("retry-after", "").isdigit(), (where, reply.headers)
    if path.startswith(("/registerJob", "/jobState", "/readyz")):
        assert reply.headers["content-type"].startswith("text/plain"), where
    else:
        assert reply.headers["content-type"] == "application/problem+json", where
        assert reply.json()["code"] in codes, (where, reply.text)


def hit_every_endpoint(service: ServiceProcess, job_id: str, finished_id: str) -> list:
    """All routes at once, as concurrent clients would: (request, reply) pairs."""
    requests = every_endpoint(job_id, finished_id) + [("GET", "/readyz", {})]
    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(lambda r: call(service.url, r[0], r[1], **r[2]), requests))
    return list(zip(requests, replies, strict=True))


def assert_every_endpoint_unavailable(service, job_id, finished_id,
                                      write_codes=("store_unavailable",)) -> float:
    """Every route answers 503 within the bound; returns the slowest answer.
    Reads say store_unavailable; writes one of ``write_codes``."""
    results = hit_every_endpoint(service, job_id, finished_id)
    for (method, path, _), reply in results:
        assert_unavailable(reply, method, path,
                           write_codes if is_write(method, path) else ("store_unavailable",))
        assert reply.elapsed < HANG_BOUND, (method, path, reply.elapsed)
    # Liveness and metrics do not depend on Redis.
    assert call(service.url, "GET", "/healthz").status == 200
    metrics = call(service.url, "GET", "/metrics", timeout=HANG_BOUND)
    assert metrics.status == 200
    return max(reply.elapsed for _, reply in results)


def assert_every_endpoint_works(service, job_id, finished_id) -> None:
    for (method, path, _), reply in hit_every_endpoint(service, job_id, finished_id):
        assert reply.status < 500, (method, path, reply.status, reply.text)


@pytest.fixture
def processes(server):
    """Starts Redis servers and services (on each HTTP server in turn) for one
    test; stops them all after it."""
    started: list = []

    class Processes:
        def redis(self, *args: str) -> RedisProcess:
            redis_server = RedisProcess(*args)
            started.append(redis_server)
            return redis_server.start()

        def service(self, redis_url: str, *args: str,
                    socket_timeout: float = SOCKET_TIMEOUT) -> ServiceProcess:
            service = ServiceProcess("--server", server, "--redis-url", redis_url,
                                     "--redis-socket-timeout",
                                     str(socket_timeout), "--threads", "24", *args)
            started.append(service)
            return service.start()

    yield Processes()
    for process in reversed(started):
        if isinstance(process, ServiceProcess):
            process.stop()
            print(process.log()[-20000:])  # shown by pytest when the test failed
            process.log_path.unlink(missing_ok=True)
        else:
            process.close()


def job_pair(service) -> tuple[str, str]:
    """A running job and a killed one (deletable)."""
    job_id = register(service, labels={"team": "a"})
    finished_id = register(service)
    assert command(service, finished_id, "kill").status == 200
    return job_id, finished_id


def load(service, job_id: str, seconds: float, threads: int = 6) -> Counter:
    """Mixed traffic from several threads for ``seconds``: statuses counted."""
    statuses: Counter = Counter()
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        while time.monotonic() < deadline:
            for method, path, arguments in (
                    ("GET", f"/v1/jobs/{job_id}", {}),
                    ("POST", f"/v1/jobs/{job_id}/heartbeat", {"body": {"progress": n}}),
                    ("POST", "/registerJob", {"form": {"type": "teams"}})):
                statuses[call(service.url, method, path, **arguments).status] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return statuses


def long_poll_wake_up(service, job_id: str) -> float:
    """Seconds from a command to the answer of a long-poll waiting for it."""
    version = call(service.url, "GET", f"/v1/jobs/{job_id}").json()["version"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, service.url, "GET",
                              f"/v1/jobs/{job_id}?wait=20&version={version}")
        long_polls_waiting(service.url)
        sent = time.monotonic()
        state = call(service.url, "GET", f"/v1/jobs/{job_id}").json()["state"]
        name = "start" if state == "pause" else "pause"
        assert command(service, job_id, name).status == 200
        reply = waiting.result()
        woken = time.monotonic() - sent
    assert reply.status == 200 and reply.json()["version"] == version + 1, reply.text
    return woken


# -- Redis gone ---------------------------------------------------------------


def test_redis_stopped_gives_503_then_recovers_without_restart(processes):
    server = processes.redis("--appendonly", "yes")
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    assert load(service, job_id, 0.5).keys() == {200}  # the pool holds live connections

    server.stop()
    slowest = assert_every_endpoint_unavailable(service, job_id, finished_id)
    time.sleep(3)  # an outage of some seconds: reconnection attempts back off
    slowest = max(slowest, assert_every_endpoint_unavailable(service, job_id, finished_id))

    server.start()
    started = time.monotonic()
    statuses = load(service, job_id, 1.0)
    recovered = time.monotonic() - started
    assert statuses.keys() == {200}, statuses
    assert_every_endpoint_works(service, job_id, finished_id)
    # Woken by the change message again, not only by the re-read every second.
    wake_up = long_poll_wake_up(service, job_id)
    assert wake_up < POLL_INTERVAL / 2
    print(f"stopped: slowest 503 {slowest:.3f}s; {sum(statuses.values())} requests "
          f"in {recovered:.1f}s after restart, all 200; long-poll woken {wake_up:.3f}s "
          "after a command")


def test_redis_restarted_between_requests_costs_no_request(processes):
    """The pool holds connections to the old process; none may fail a request."""
    server = processes.redis("--appendonly", "yes")
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    assert load(service, job_id, 0.5).keys() == {200}
    server.stop()
    server.start()
    assert load(service, job_id, 0.5).keys() == {200}
    assert_every_endpoint_works(service, job_id, finished_id)


def test_redis_frozen_gives_503_within_the_timeout_then_recovers(processes):
    server = processes.redis()
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    assert load(service, job_id, 0.5).keys() == {200}

    with ThreadPoolExecutor(1) as pool:
        poll_started = time.monotonic()
        waiting = pool.submit(call, service.url, "GET", f"/v1/jobs/{job_id}?wait=30&version=1")
        long_polls_waiting(service.url)
        server.freeze()
        frozen_at = time.monotonic()
        try:
            # A write sent on a pooled connection may run once Redis wakes: its
            # outcome is unknown. One that meets the frozen server while connecting
            # was never sent.
            slowest = assert_every_endpoint_unavailable(
                service, job_id, finished_id, ("outcome_unknown", "store_unavailable"))
            # A long-poll already waiting re-reads the job at least every second.
            long_poll = waiting.result()
            assert_unavailable(long_poll, "GET", "/v1/jobs/{id}?wait=30")
            long_poll_end = poll_started + long_poll.elapsed - frozen_at
            assert long_poll_end < POLL_INTERVAL + HANG_BOUND
        finally:
            server.thaw()
    started = time.monotonic()
    statuses = load(service, job_id, 1.0)
    assert statuses.keys() == {200}, statuses
    assert_every_endpoint_works(service, job_id, finished_id)
    print(f"frozen: slowest 503 {slowest:.3f}s (socket timeout {SOCKET_TIMEOUT}s), "
          f"waiting long-poll ended {long_poll_end:.3f}s after the freeze; "
          f"{sum(statuses.values())} requests in {time.monotonic() - started:.1f}s "
          "after SIGCONT, all 200")


# -- a 503 says whether the write may have happened -------------------------------


def retried_while_frozen(server: RedisProcess, attempt) -> tuple[object, list[str]]:
    """Freezes Redis, calls ``attempt()`` until it succeeds (as a client that
    retries would, every half second), and thaws Redis once an attempt has
    answered outcome_unknown. Returns the result and every failed attempt's code."""
    codes: list[str] = []
    result: list = []

    def retry() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                result.append(attempt())
                return
            except ServiceUnavailable as error:
                codes.append(error.code)
                time.sleep(0.5)

    server.freeze()
    thread = threading.Thread(target=retry)
    try:
        thread.start()
        eventually(lambda: "outcome_unknown" in codes, timeout=30)
        met = len(codes)
        eventually(lambda: len(codes) >= met + 2)  # a few more attempts meet the frozen server
    finally:
        server.thaw()
    thread.join(60)
    assert result, codes
    return result[0], codes


def test_retrying_a_registration_while_redis_is_frozen_registers_one_job(processes):
    """The issue: a 503 after a frozen Redis, and the job existed afterwards; a
    retry then made a second one. Now the 503 says the outcome is unknown, and
    the client's retries, all with one Idempotency-Key, give one job."""
    server = processes.redis()
    service = processes.service(server.url)
    client = Client(service.url, timeout=30)
    register(service)  # the service's pool holds a live connection
    run = uuid.uuid4().hex
    key = uuid.uuid4().hex
    job, codes = retried_while_frozen(server, lambda: client.register(
        "teams", labels={"run": run}, idempotency_key=key))
    assert codes[0] == "outcome_unknown", codes
    assert set(codes) <= {"outcome_unknown", "store_unavailable"}, codes
    [listed] = client.list(labels={"run": run})["jobs"]
    assert listed["id"] == job["id"]
    assert [e["command"] for e in client.history(job["id"])] == ["register"]
    # The old endpoint takes the key too, and keeps its text answers.
    reply = call(service.url, "POST", "/registerJob", form={"type": "teams"},
                 headers={"Idempotency-Key": key + "-old"})
    again = call(service.url, "POST", "/registerJob", form={"type": "teams"},
                 headers={"Idempotency-Key": key + "-old"})
    assert (reply.status, again.status) == (200, 200)
    assert reply.text == again.text and reply.text.startswith("Created! id = ")
    client.close()


def test_retrying_a_command_while_redis_is_frozen_applies_it_once(processes):
    server = processes.redis()
    service = processes.service(server.url)
    client = Client(service.url, timeout=30)
    job_id = register(service)
    key = uuid.uuid4().hex
    answer, codes = retried_while_frozen(
        server, lambda: client.command(job_id, "kill", reason="frozen", idempotency_key=key))
    assert codes[0] == "outcome_unknown", codes
    # The first attempt ran when Redis woke; the retry was recognised as it.
    assert (answer["job"]["state"], answer["changed"]) == ("kill", True)
    assert [(e["command"], e["reason"]) for e in client.history(job_id)] == [
        ("register", ""), ("kill", "frozen")]
    client.close()


def test_the_command_line_says_how_to_retry_an_unknown_outcome(processes):
    server = processes.redis()
    service = processes.service(server.url)
    job_id = register(service)
    environ = {**os.environ, "KARMCHARI_URL": service.url}
    environ.pop("KARMCHARI_TOKEN", None)

    def karmchari(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*karmchari_command(), *args], env=environ, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    server.freeze()
    try:
        first = karmchari("pause", job_id, "--reason", "frozen")
    finally:
        server.thaw()
    assert first.returncode == 5, first.stderr
    hint = re.search(r"run the same command with --idempotency-key (\S+)", first.stderr)
    assert hint and "may or may not have been applied" in first.stderr, first.stderr
    again = karmchari("pause", job_id, "--reason", "frozen", "--idempotency-key", hint[1])
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{job_id} -- pause, version 2"
    assert [e["command"] for e in history(service, job_id)] == ["register", "pause"]


def test_a_write_refused_before_it_was_sent_stays_store_unavailable(processes):
    """No connection (Redis stopped): nothing was sent, so nothing happened.
    (Refusals that come as a reply, OOM, READONLY and BUSY, are checked below.)"""
    server = processes.redis("--appendonly", "yes")
    service = processes.service(server.url)
    job_id = register(service)
    server.stop()
    for reply in (call(service.url, "POST", "/v1/jobs", body={"type": "teams"}),
                  command(service, job_id, "kill")):
        assert reply.status == 503
        assert reply.json()["code"] == "store_unavailable", reply.text
        assert "not applied" in reply.json()["detail"]
    server.start()
    assert [e["command"] for e in history(service, job_id)] == ["register"]


# -- NOSCRIPT ------------------------------------------------------------------


def test_script_flush_during_load_costs_no_request(processes):
    server = processes.redis()
    service = processes.service(server.url, socket_timeout=5.0)
    job_ids = [register(service) for _ in range(8)]
    flusher = server.client()
    stopping = threading.Event()
    flushes = 0

    def flush_scripts() -> None:
        nonlocal flushes
        while not stopping.is_set():
            flusher.script_flush()
            flushes += 1
            time.sleep(0.005)

    failures: list = []
    statuses: Counter = Counter()

    def traffic(n: int) -> None:
        job_id = job_ids[n % len(job_ids)]
        for i in range(60):
            for method, path, arguments in (
                    ("POST", "/registerJob", {"form": {"type": "teams"}}),
                    ("POST", "/v1/jobs", {"body": {"type": "export", "labels": {"n": str(n)}}}),
                    ("POST", "/jobState",
                     {"form": {"id": job_id, "command": ("pause", "start")[i % 2]}}),
                    ("POST", f"/v1/jobs/{job_id}/commands",
                     {"body": {"command": ("start", "pause")[i % 2]}}),
                    ("GET", f"/v1/jobs/{job_id}", {}),
                    ("POST", f"/v1/jobs/{job_id}/heartbeat", {"body": {"progress": i}}),
                    ("POST", "/v1/heartbeats",
                     {"body": {"heartbeats": [{"id": j, "progress": i} for j in job_ids]}})):
                reply = call(service.url, method, path, **arguments)
                statuses[reply.status] += 1
                if reply.status >= 300:
                    failures.append((method, path, reply.status, reply.text))

    flushing = threading.Thread(target=flush_scripts)
    flushing.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(traffic, range(6)))
    finally:
        stopping.set()
        flushing.join()
    assert failures == []
    assert flushes > 50
    print(f"SCRIPT FLUSH x{flushes} during {sum(statuses.values())} requests: {dict(statuses)}")


# -- durability ------------------------------------------------------------------


def test_kill_9_loses_no_registration_that_was_answered(processes):
    server = processes.redis("--appendonly", "yes", "--appendfsync", "always")
    service = processes.service(server.url)
    accepted: list[str] = []
    statuses: Counter = Counter()
    killed = threading.Event()
    answers_after_kill = 0

    def registrar(n: int) -> None:
        nonlocal answers_after_kill
        for i in range(10_000):
            if killed.is_set() and answers_after_kill > 40:
                return
            if i % 2:
                reply = call(service.url, "POST", "/registerJob", form={"type": "teams"})
                job_id = reply.text.rsplit(" ", 1)[-1] if reply.status == 200 else None
            else:
                reply = call(service.url, "POST", "/v1/jobs",
                             body={"type": "upload", "labels": {"thread": str(n)}})
                job_id = reply.json()["id"] if reply.status == 201 else None
            statuses[reply.status] += 1
            if killed.is_set():
                answers_after_kill += 1
            if job_id:
                accepted.append(job_id)

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(registrar, n) for n in range(6)]
        eventually(lambda: len(accepted) >= 30)  # registrations answered before the kill
        server.kill()
        killed.set()
        for future in running:
            future.result()
    assert statuses.keys() <= {200, 201, 503}, statuses
    assert statuses[503] > 0

    server.start()
    missing = [job_id for job_id in accepted
               if call(service.url, "GET", f"/v1/jobs/{job_id}").status != 200]
    assert missing == []
    print(f"kill -9 during registrations: {len(accepted)} answered as created, all there "
          f"after restart; {dict(statuses)}")


# -- lost replies ----------------------------------------------------------------


class LosingProxy:
    """A TCP proxy between the service and Redis that can lose a reply: once
    a request containing the armed marker passes, it forwards the request,
    lets Redis answer, runs ``meanwhile`` (other requests may be served), and
    then resets the service's connection instead of passing the reply on. The
    command ran; its sender cannot know, and retries it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._meanwhile = None
        self.lost = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, marker: str, meanwhile=None) -> None:
        with self._lock:
            self._marker, self._meanwhile = marker.encode(), meanwhile

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [downstream, upstream]
            doomed = threading.Event()
            threading.Thread(target=self._requests, args=(downstream, upstream, doomed),
                             daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, downstream, doomed),
                             daemon=True).start()

    def _requests(self, downstream, upstream, doomed: threading.Event) -> None:
        try:
            while chunk := downstream.recv(65536):
                with self._lock:
                    if self._marker and self._marker in chunk:
                        self._marker = None
                        doomed.set()
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _replies(self, upstream, downstream, doomed: threading.Event) -> None:
        try:
            while chunk := upstream.recv(65536):
                if doomed.is_set():
                    if self._meanwhile:
                        self._meanwhile()
                    self.lost += 1
                    # RST, not FIN: the reply is gone for good. Shutting down
                    # reading first wakes the other thread, so the close is final.
                    downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                    downstream.shutdown(socket.SHUT_RD)
                    return
                downstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(downstream)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


@pytest.fixture
def losing_proxy(processes):
    proxy = LosingProxy(processes.redis().port)
    yield proxy, processes.service(proxy.url)
    proxy.close()


def sha_of(script: str) -> str:
    """The SHA the service sends in EVALSHA: marks a call of that script."""
    return hashlib.sha1(load_source(script).encode("utf-8")).hexdigest()


def test_command_whose_reply_was_lost_is_applied_once_despite_a_change_meanwhile(
        losing_proxy):
    proxy, service = losing_proxy
    job_id = register(service)
    meanwhile = {}

    def resume() -> None:
        meanwhile["start"] = command(service, job_id, "start")

    proxy.lose_reply_to("lost-reply", resume)
    paused = command(service, job_id, "pause", reason="lost-reply")
    assert proxy.lost == 1
    assert paused.status == 200, paused.text
    assert paused.json()["changed"] is True
    assert meanwhile["start"].status == 200 and meanwhile["start"].json()["changed"] is True
    entries = history(service, job_id)
    assert_valid_path(entries)
    assert [e["command"] for e in entries] == ["register", "pause", "start"]
    assert call(service.url, "GET", f"/v1/jobs/{job_id}").json()["version"] == 3


def job_count(service) -> int:
    return len(call(service.url, "GET", "/v1/jobs?limit=500").json()["jobs"])


def test_every_write_whose_reply_was_lost_takes_effect_once(losing_proxy):
    proxy, service = losing_proxy
    job_id = register(service, heartbeat_timeout=60)

    proxy.lose_reply_to(sha_of("registerJob"))
    reply = call(service.url, "POST", "/registerJob", form={"type": "teams"})
    assert reply.status == 200, reply.text
    assert job_count(service) == 2

    proxy.lose_reply_to(sha_of("registerJob"))
    reply = call(service.url, "POST", "/v1/jobs", body={"type": "export", "labels": {"a": "b"}},
                 headers={"Idempotency-Key": "lost-1"})
    assert reply.status == 201, reply.text
    assert job_count(service) == 3
    again = call(service.url, "POST", "/v1/jobs", body={"type": "export", "labels": {"a": "b"}},
                 headers={"Idempotency-Key": "lost-1"})
    assert (again.status, again.json()["id"]) == (200, reply.json()["id"])

    proxy.lose_reply_to(sha_of("applyCommand"))
    reply = call(service.url, "POST", "/jobState", form={"id": job_id, "command": "pause"})
    assert (reply.status, reply.text) == (200, f"{job_id} -- pause")

    proxy.lose_reply_to(sha_of("applyCommand"))
    reply = call(service.url, "POST", f"/v1/jobs/{job_id}/commands", body={"command": "start"},
                 headers={"If-Match": '"2"'})
    assert reply.status == 200, reply.text
    assert (reply.json()["changed"], reply.json()["job"]["version"]) == (True, 3)

    proxy.lose_reply_to(sha_of("recordHeartbeats"))
    reply = call(service.url, "POST", f"/v1/jobs/{job_id}/heartbeat", body={"progress": 0.5})
    assert (reply.status, reply.json()["state"]) == (200, "start"), reply.text
    proxy.lose_reply_to(sha_of("recordHeartbeats"))
    reply = call(service.url, "POST", "/v1/heartbeats", body={"heartbeats": [{"id": job_id}]})
    assert (reply.status, reply.json()["results"][0]["found"]) == (200, True), reply.text

    proxy.lose_reply_to(sha_of("applyCommand"))
    assert command(service, job_id, "kill").status == 200
    entries = history(service, job_id)
    assert_valid_path(entries)
    assert [e["command"] for e in entries] == ["register", "pause", "start", "kill"]

    proxy.lose_reply_to(sha_of("deleteJob"))
    reply = call(service.url, "DELETE", f"/v1/jobs/{job_id}")
    assert reply.status == 204, reply.text
    assert call(service.url, "GET", f"/v1/jobs/{job_id}").status == 404
    assert proxy.lost == 8


def test_connections_killed_under_load_apply_each_command_once(processes):
    """CLIENT KILL drops the service's connections at random points: replies
    are lost mid-flight and redis-py retries. Every change a client was told
    about is in the history once, and nothing else is."""
    server = processes.redis()
    service = processes.service(server.url)
    job_ids = [register(service) for _ in range(4)]
    killer = server.client()
    stopping = threading.Event()
    kills = 0

    def kill_connections() -> None:
        nonlocal kills
        while not stopping.is_set():
            kills += killer.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.01)

    changed: Counter = Counter()
    unknown: Counter = Counter()  # 503: the outcome is not known
    statuses: Counter = Counter()

    def toggler(n: int) -> None:
        job_id = job_ids[n % len(job_ids)]
        for i in range(80):
            reply = command(service, job_id, ("pause", "start")[(i + n) % 2])
            statuses[reply.status] += 1
            if reply.status == 200 and reply.json()["changed"]:
                changed[job_id] += 1
            elif reply.status == 503:
                unknown[job_id] += 1
            statuses[call(service.url, "POST", "/registerJob", form={"type": "teams"}).status] += 1

    killing = threading.Thread(target=kill_connections)
    killing.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(toggler, range(8)))
    finally:
        stopping.set()
        killing.join()
    assert statuses.keys() <= {200, 503}, statuses
    assert kills > 20
    for job_id in job_ids:
        entries = history(service, job_id)
        assert_valid_path(entries)
        applied = entries[-1]["version"] - 1
        assert changed[job_id] <= applied <= changed[job_id] + unknown[job_id], job_id
    print(f"CLIENT KILL: {kills} connections killed during {sum(statuses.values())} "
          f"requests: {dict(statuses)}")


# -- Redis refusing writes ---------------------------------------------------------


def dataset(server: RedisProcess) -> dict[str, bytes]:
    """Every key with its serialized value."""
    raw = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        return {key: raw.dump(key) for key in raw.scan_iter(count=1000)}
    finally:
        raw.close()


def writes_and_reads(job_id: str) -> tuple[list, list]:
    writes = [request for request in every_endpoint(job_id, job_id)
              if request[0] != "GET" and request[0] != "DELETE"]
    reads = [request for request in every_endpoint(job_id, job_id) if request[0] == "GET"
             and "wait=" not in request[1]]
    return writes, reads


def assert_writes_refused_and_reads_served(service, job_id: str) -> None:
    writes, reads = writes_and_reads(job_id)
    for method, path, arguments in writes:
        assert_unavailable(call(service.url, method, path, **arguments), method, path)
    for method, path, arguments in reads:
        reply = call(service.url, method, path, **arguments)
        assert reply.status == 200, (method, path, reply.status, reply.text)


def test_out_of_memory_refuses_writes_with_503_and_writes_nothing(processes):
    server = processes.redis("--maxmemory-policy", "noeviction")
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    admin = server.client()
    before = dataset(server)
    admin.config_set("maxmemory", "1")
    try:
        assert_writes_refused_and_reads_served(service, job_id)
        assert dataset(server) == before
        # Deleting frees memory, so it is allowed: the retention sweep can recover.
        assert call(service.url, "DELETE", f"/v1/jobs/{finished_id}").status == 204
    finally:
        admin.config_set("maxmemory", "0")
    assert command(service, job_id, "pause").status == 200
    assert call(service.url, "POST", "/registerJob", form={"type": "teams"}).status == 200


def test_read_only_replica_refuses_writes_with_503_and_writes_nothing(processes):
    server = processes.redis()
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    admin = server.client()
    before = dataset(server)
    # A master that does not exist: the data stays, and the server is read-only.
    admin.replicaof("127.0.0.1", free_port())
    try:
        assert_writes_refused_and_reads_served(service, job_id)
        assert_unavailable(call(service.url, "DELETE", f"/v1/jobs/{finished_id}"), "DELETE",
                           "/v1/jobs/{id}")
        assert dataset(server) == before
    finally:
        admin.replicaof("NO", "ONE")
    assert command(service, job_id, "pause").status == 200
    assert call(service.url, "DELETE", f"/v1/jobs/{finished_id}").status == 204


def test_busy_script_gives_503_then_recovers(processes):
    server = processes.redis("--busy-reply-threshold", "100")
    service = processes.service(server.url)
    job_id, finished_id = job_pair(service)
    before = dataset(server)
    busy = redis.Redis.from_url(server.url)  # no socket timeout: it waits for the loop
    with ThreadPoolExecutor(1) as pool:
        looping = pool.submit(busy.eval, "while true do end", 0)
        admin = server.client()
        deadline = time.monotonic() + 10
        while True:  # until the loop runs past the threshold
            try:
                admin.ping()
            except redis.exceptions.ResponseError as error:
                assert str(error).startswith("BUSY")
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        try:
            slowest = assert_every_endpoint_unavailable(service, job_id, finished_id)
        finally:
            admin.script_kill()
        with pytest.raises(redis.exceptions.ResponseError):
            looping.result()
    busy.close()
    assert dataset(server) == before
    statuses = load(service, job_id, 0.5)
    assert statuses.keys() == {200}, statuses
    assert_every_endpoint_works(service, job_id, finished_id)
    print(f"BUSY: slowest 503 {slowest:.3f}s")
