"""Clients that try to freeze, starve or trick the serving layer (issue 18), on
each server: stalled bodies, slow heads at the connection limit, dropped and
greedy long-polls, SIGTERM under keep-alive writers, Expect without a body, and
header blocks the two servers must read alike. Every attack is bounded in
sockets and in time; the bounds on waits are the requirements themselves."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest

from tests import test_serving
from tests.http_calls import call
from tests.live import SERVERS
from tests.test_serving import register, wait_closed
from tests.waiting import eventually, long_polls_waiting

started = test_serving.started  # the fixture that starts and stops services

each_server = pytest.mark.parametrize("server", SERVERS)


def connect(service, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=timeout)


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the socket's timeout)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


# -- 1. stalled request bodies ---------------------------------------------------

@each_server
def test_stalled_bodies_hold_no_request_thread(server, started):
    """2 x --threads clients send a head with Content-Length: 1000, then "{", and
    stall: /healthz and a write are answered within 1 s all the while; on Granian
    each stalled body gets 408 after --body-timeout (waitress reads bodies in its
    loop, without a thread, and closes them after --idle-timeout)."""
    service = started(server, "--threads", "4", "--body-timeout", "3")
    stalled = []
    for _ in range(8):
        sock = connect(service)
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        stalled.append(sock)
    time.sleep(0.5)
    slowest = 0.0
    for _ in range(5):
        reply = call(service.url, "GET", "/healthz", timeout=1)
        assert reply.status == 200
        written = call(service.url, "POST", "/v1/jobs", body={"type": "teams"}, timeout=1)
        assert written.status == 201
        slowest = max(slowest, reply.elapsed, written.elapsed)
    print(f"{server}: slowest answer beside 8 stalled bodies {slowest * 1000:.0f} ms")
    if server == "granian":
        for sock in stalled:
            sock.settimeout(15)
            answer = answer_of(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "body_timeout"
    for sock in stalled:
        sock.close()


# -- 2. slow heads ---------------------------------------------------------------------

def trickle(socks: list[socket.socket], stop: threading.Event, every: float) -> None:
    """One header line per socket every ``every`` seconds, never the end of the head."""
    line = 0
    for sock in socks:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        except OSError:
            pass
    while not stop.wait(every):
        line += 1
        for sock in socks:
            try:
                sock.sendall(b"X-Line-%d: a\r\n" % line)
            except OSError:
                pass


@each_server
def test_the_header_timeout_is_a_deadline_for_the_whole_head(server, started):
    """A head sent one line every 0.3 s is cut after --header-timeout (2 s), though
    no line came later than the one before by more than 0.3 s."""
    service = started(server, "--header-timeout", "2")
    sock = connect(service)
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=([sock], stop, 0.3))
    sender.start()
    began = time.monotonic()
    try:
        assert wait_closed(sock, timeout=10), "the trickling head was never cut"
    finally:
        stop.set()
        sender.join()
        sock.close()
    print(f"{server}: trickling head cut after {time.monotonic() - began:.1f} s")


def test_slow_heads_at_the_connection_limit_lock_nobody_out(started):
    """Waitress: 250 connections trickling header lines against a connection limit
    of 200; a well-behaved client is answered within 2 s all the while (the
    slowest heads are shed for it). Granian cannot shed: see docs/security.md."""
    service = started("waitress", "--connection-limit", "200", "--header-timeout", "60")
    socks = []
    for _ in range(250):
        try:
            socks.append(connect(service, timeout=2))
        except OSError:
            pass
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=(socks, stop, 1.0))
    sender.start()
    latencies = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = call(service.url, "GET", "/healthz", timeout=2)
            assert reply.status == 200
            latencies.append(reply.elapsed)
            time.sleep(0.2)
    finally:
        stop.set()
        sender.join()
        for sock in socks:
            sock.close()
    print(f"waitress: {len(latencies)} answers beside 250 slow heads at a limit of 200, "
          f"slowest {max(latencies) * 1000:.0f} ms")


# -- 3. waiting slots -----------------------------------------------------------------

def watch_request(job: dict, wait: float, token: str = "") -> bytes:
    body = json.dumps({"jobs": {job["id"]: job["version"]}, "wait": wait}).encode()
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    return (b"POST /v1/watch HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (auth, len(body), body))


@each_server
def test_a_dropped_watch_frees_its_slot_within_a_second(server, started):
    """Every waiting slot (--threads 4: 2) taken by a watch of 60 s whose client
    closed its connection right after sending: another long-poll gets a slot
    within a second."""
    service = started(server, "--threads", "4")
    job = register(service)
    dropped = [connect(service) for _ in range(2)]
    for sock in dropped:
        sock.sendall(watch_request(job, 60))
    long_polls_waiting(service.url, 2)  # both are waiting now
    poll = f"/v1/jobs/{job['id']}?wait=0"
    assert call(service.url, "GET", poll).status == 429, "the slots were not taken"
    for sock in dropped:
        sock.close()
    closed = time.monotonic()
    while call(service.url, "GET", poll).status == 429:
        assert time.monotonic() - closed < 1.5, "a slot outlived its client"
        time.sleep(0.05)
    print(f"{server}: slot free {time.monotonic() - closed:.2f} s after its client left")


TOKENS = {"KARMCHARI_TOKENS": "greedy:reader:greedy-token-0123456789,"
                              "other:reader:other-token-01234567890,"
                              "boss:admin:admin-token-0123456789012"}


@each_server
def test_one_client_cannot_take_every_waiting_slot(server, started, monkeypatch):
    """--threads 8: 4 waiting slots, 2 per token name by default. The third watch
    of one name gets 429 with Retry-After; another name still gets a slot."""
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    service = started(server, "--threads", "8")
    reply = call(service.url, "POST", "/v1/jobs", body={"type": "teams"},
                 headers={"Authorization": "Bearer admin-token-0123456789012"})
    job = reply.json()
    held = [connect(service) for _ in range(2)]
    for sock in held:
        sock.sendall(watch_request(job, 20, "greedy-token-0123456789"))
    long_polls_waiting(service.url, 2,
                       headers={"Authorization": "Bearer admin-token-0123456789012"})
    try:
        with connect(service) as third:
            third.sendall(watch_request(job, 0, "greedy-token-0123456789"))
            answer = third.recv(65536)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        assert b"retry-after:" in answer.lower()
        with connect(service) as other:
            other.sendall(watch_request(job, 0, "other-token-01234567890"))
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


# -- 5. the drain under keep-alive writers -----------------------------------------

@each_server
@pytest.mark.slow
def test_drain_resets_no_request_of_keep_alive_writers(server, started):
    """8 keep-alive clients loop POST /jobState; SIGTERM: every request sent on a
    connection that had been answered before is answered (the last ones with
    Connection: close), none is reset. (A connection opened as the listener
    closes may be closed unanswered, as one refused: counted apart.)"""
    service = started(server, "--threads", "8", "--shutdown-timeout", "20")
    job = register(service)
    body = f"id={job['id']}&command=pause".encode()
    request = (b"POST /jobState HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Type: application/x-www-form-"
               b"urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    answered, lost, unserved = [0], [], []

    def writer() -> None:
        while True:
            try:
                sock = connect(service, timeout=10)
            except OSError:
                return  # no longer accepting: the drain is on
            stream = sock.makefile("rb")
            fresh = True
            with sock:
                while True:
                    try:
                        sock.sendall(request)
                        status = stream.readline()
                        if not status:
                            raise ConnectionResetError("closed without an answer")
                        headers = {}
                        while (line := stream.readline()) not in (b"\r\n", b""):
                            name, _, value = line.decode().partition(":")
                            headers[name.strip().lower()] = value.strip()
                        stream.read(int(headers["content-length"]))
                    except OSError as error:
                        (unserved if fresh else lost).append(repr(error))
                        return
                    fresh = False
                    answered[0] += 1
                    if headers.get("connection", "").lower() == "close":
                        break

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    eventually(lambda: answered[0] >= 40)  # every writer under way
    service.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert service.process.wait(30) == 0
    print(f"{server}: {answered[0]} requests answered, {len(lost)} lost in the drain, "
          f"{len(unserved)} new connections closed unserved")
    assert answered[0] > 0
    assert not lost, lost


# -- 10. Expect: 100-continue without a body ------------------------------------------

@each_server
@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\r\n",
    b"POST /registerJob HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n",
], ids=["GET", "POST with Content-Length 0"])
def test_expect_continue_without_a_body_is_answered(server, started, request_bytes):
    service = started(server)
    with connect(service, timeout=1) as sock:  # the requirement: within a second
        sock.sendall(request_bytes)
        answer = sock.recv(65536)
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), answer[:200]


# -- 11. header blocks read alike -------------------------------------------------------

def test_a_bare_lf_in_the_head_is_refused_by_waitress(started):
    """Granian's parser (hyper) takes a bare LF as a line end before Karmchari
    sees the head; docs/security.md says so. Waitress refuses it."""
    service = started("waitress")
    with connect(service) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\n"
                     b"X-A: a\nContent-Length: 17\r\n\r\n{\"type\": \"teams\"}")
        assert answer_of(sock).startswith(b"HTTP/1.0 400")
