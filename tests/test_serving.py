"""The serving layer on each server (``--server waitress`` and ``granian``):
connections that cannot lock others out, idle keep-alive connections closed,
the drain on SIGTERM/SIGINT, long-polls beside ordinary requests, and the
waitress adapter's supported versions. Real processes on loopback; the time
bounds are generous, the figures measured are printed."""

from __future__ import annotations

import inspect
import json
import resource
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import falcon.inspect
import pytest

from app.resources import legacy
from app.serving import common, granian_server, waitress_adapter
from tests.http_calls import call
from tests.live import SERVERS
from tests.servers import RedisProcess, ServiceProcess
from tests.waiting import eventually, long_polls_waiting

each_server = pytest.mark.parametrize("server", SERVERS)


@pytest.fixture
def started(redis_url, key_prefix):
    """Starts ``karmchari serve`` processes for one test and stops them after it."""
    services: list[ServiceProcess] = []

    def start(server: str, *args: str, redis: str = redis_url, **kwargs) -> ServiceProcess:
        service = ServiceProcess("--server", server, "--redis-url", redis, *args,
                                 env={"KARMCHARI_KEY_PREFIX": key_prefix}, **kwargs)
        services.append(service)
        return service.start()

    yield start
    for service in services:
        service.stop()
        print(service.log()[-5000:])  # shown when the test failed
        service.log_path.unlink(missing_ok=True)


def register(service: ServiceProcess, **fields) -> dict:
    reply = call(service.url, "POST", "/v1/jobs", body={"type": "teams", **fields})
    assert reply.status == 201, reply.text
    return reply.json()


def soft_open_files(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    return int(line.split()[3])


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True once the server has closed ``sock`` (end of file or reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# -- idle and slow connections ------------------------------------------------

@each_server
@pytest.mark.slow
def test_idle_and_slow_connections_lock_nobody_out(server, started):
    """1,000 idle connections and 100 sending one header byte every 5 s, with the
    soft open-files limit at 1,024: a new client is still answered at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:  # this process holds 1,100 sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    service = started(server, "--threads", "8", soft_open_files=1024)
    assert soft_open_files(service.process.pid) > 1024, "the soft limit was not raised"
    legacy_id = call(service.url, "POST", "/registerJob", form={"type": "teams"}).text.split()[-1]
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(1000)]
    slow = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(100)]
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
    stop = threading.Event()

    def trickle() -> None:
        for position in range(len(head)):
            for sock in slow:
                try:
                    sock.send(head[position:position + 1])
                except OSError:
                    pass
            if stop.wait(5):
                return

    trickler = threading.Thread(target=trickle)
    trickler.start()
    latencies = []
    try:
        deadline = time.monotonic() + 6  # past one more byte from each slow client
        while time.monotonic() < deadline:
            for path in ("/healthz", f"/jobState?id={legacy_id}"):
                reply = call(service.url, "GET", path, timeout=10)
                assert reply.status == 200, reply.text
                latencies.append(reply.elapsed)
            time.sleep(0.5)
    finally:
        stop.set()
        trickler.join()
        for sock in idle + slow:
            sock.close()
    print(f"{server}: {len(latencies)} answers beside 1,100 open connections, slowest "
          f"{max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 5, "a new client waited behind idle or slow connections"


@each_server
def test_idle_keep_alive_connections_close_after_the_idle_timeout(server, started):
    service = started(server, "--idle-timeout", "2")
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert wait_closed(sock, timeout=30), "the idle connection was kept open"
    print(f"{server}: idle connection closed after {time.monotonic() - began:.1f} s")
    assert call(service.url, "GET", "/healthz").status == 200


# -- drain ----------------------------------------------------------------------

@each_server
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_service_exits_at_once(server, signum, started):
    """Nothing in flight, one idle keep-alive connection: the drain ends long
    before --shutdown-timeout (30 s)."""
    service = started(server, "--shutdown-timeout", "30")
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        service.process.send_signal(signum)
        assert service.process.wait(30) == 0
        took = time.monotonic() - began
        assert wait_closed(sock, timeout=5)
    print(f"{server}: exited {took:.2f} s after {signum.name}")
    assert took < 10, "the drain waited for the idle connection"


@each_server
@pytest.mark.slow
def test_drain_under_load_answers_every_accepted_request(server, started, redis_client,
                                                         key_prefix):
    """Writers on keep-alive connections and waiting long-polls, then SIGTERM:
    every job the service created was answered to its client, the long-polls
    answer at once with Connection: close, and the service exits by itself."""
    service = started(server, "--threads", "8", "--shutdown-timeout", "20")
    watched = register(service)
    answered: list[str] = []
    failures: list[str] = []
    draining = threading.Event()

    def writer(n: int) -> None:
        connection = None
        sent = 0
        while True:
            if connection is None:
                try:
                    connection = socket.create_connection(("127.0.0.1", service.port), 5)
                except OSError:
                    return  # no longer accepting
                stream = connection.makefile("rb")
            body = json.dumps({"type": "teams", "labels": {"n": f"{n}-{sent}"}}).encode()
            sent += 1
            try:
                connection.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                                   % (len(body), body))
                status = stream.readline()
                if not status:
                    raise ConnectionResetError("closed")
                headers = {}
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                job = json.loads(stream.read(int(headers["content-length"])))
                assert status.split()[1] == b"201", status
                answered.append(job["id"])
                if headers.get("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (ConnectionError, OSError):
                connection.close()
                connection = None
                if not draining.is_set():
                    failures.append(f"writer {n}: connection lost before the drain")
                    return

    def long_poll() -> tuple:
        reply = call(service.url, "GET",
                     f"/v1/jobs/{watched['id']}?wait=30&version={watched['version']}",
                     timeout=60)
        return reply.status, reply.headers.get("connection"), time.monotonic()

    with ThreadPoolExecutor(12) as pool:
        polls = [pool.submit(long_poll) for _ in range(3)]
        writers = [pool.submit(writer, n) for n in range(8)]
        long_polls_waiting(service.url, 3)
        eventually(lambda: len(answered) >= 40)  # the writers are under way
        draining.set()
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        poll_results = [poll.result() for poll in polls]
        for future in writers:
            future.result()
        assert service.process.wait(30) == 0
        exited = time.monotonic() - signalled
    created = {job_id for key in redis_client.scan_iter(match=f"{{{key_prefix}:*", count=1000)
               if (job_id := key.rpartition(":")[2]) and len(job_id) == 32
               and redis_client.type(key) == "hash"}
    created.discard(watched["id"])
    print(f"{server}: {len(answered)} writes answered, {len(created)} jobs created, "
          f"long-polls answered {[round(t - signalled, 2) for *_, t in poll_results]} s "
          f"after SIGTERM, exit after {exited:.2f} s")
    assert not failures, failures
    assert answered, "no load reached the service"
    assert created == set(answered), "a request the service carried out was not answered"
    for status, connection, when in poll_results:
        assert status == 200
        assert connection == "close"
        assert when - signalled < 10, "a long-poll held the drain"


@each_server
def test_exit_within_the_shutdown_timeout_when_a_request_hangs(server, started, key_prefix):
    """Redis frozen, a request waiting on it: the service exits after
    --shutdown-timeout (1 s), not after the Redis timeout (30 s)."""
    frozen = RedisProcess().start()
    try:
        service = started(server, "--shutdown-timeout", "1", "--redis-socket-timeout", "30",
                          redis=frozen.url)
        job = register(service)
        frozen.freeze()
        with ThreadPoolExecutor(1) as pool:
            hanging = pool.submit(call, service.url, "GET", f"/v1/jobs/{job['id']}",
                                  timeout=60)
            time.sleep(0.5)  # the request reaches the frozen Redis (no /metrics answers now)
            began = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            service.process.wait(60)
            took = time.monotonic() - began
            frozen.thaw()
            with pytest.raises(OSError):
                hanging.result()
    finally:
        frozen.close()
    print(f"{server}: exited {took:.2f} s after SIGTERM with a request stuck")
    assert took < 15, "the drain outlived --shutdown-timeout"


# -- long-polls beside ordinary requests -----------------------------------------

@each_server
def test_waiting_long_polls_never_delay_an_ordinary_request(server, started):
    """Every long-poll slot taken (threads/2) and more refused: ordinary requests
    keep being answered at once (granian 2.7.9 fixed a thread pool that let them
    queue behind long-lived responses, its issue #873)."""
    service = started(server, "--threads", "4")
    job = register(service)
    target = f"/v1/jobs/{job['id']}?wait=20&version={job['version']}"
    with ThreadPoolExecutor(4) as pool:
        polls = [pool.submit(call, service.url, "GET", target, timeout=60) for _ in range(3)]
        # Two take the long-poll slots (threads/2); the third is refused with 429.
        long_polls_waiting(service.url, 2)
        latencies = []
        for _ in range(10):
            for path in ("/healthz", f"/v1/jobs/{job['id']}"):
                reply = call(service.url, "GET", path, timeout=30)
                assert reply.status == 200
                latencies.append(reply.elapsed)
        assert call(service.url, "POST", f"/v1/jobs/{job['id']}/commands",
                    body={"command": "pause"}).status == 200
        statuses = sorted(poll.result().status for poll in polls)
    print(f"{server}: slowest ordinary request beside waiting long-polls "
          f"{max(latencies) * 1000:.0f} ms")
    assert statuses == [200, 200, 429]
    assert max(latencies) < 5, "an ordinary request waited behind long-polls"


# -- the adapters -----------------------------------------------------------------

def test_the_installed_waitress_is_one_the_adapter_supports():
    """Fails on a waitress release the adapter was not written for: check what
    app/serving/waitress_adapter.py uses, then add the release to SUPPORTED."""
    assert waitress_adapter.check_version() == version("waitress")
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import BaseWSGIServer
    from waitress.task import ErrorTask, WSGITask
    for name in ("parser_class", "task_class", "error_task_class", "request",
                 "total_outbufs_len", "will_close"):
        assert hasattr(HTTPChannel, name), name
    assert "self.requests = []" in inspect.getsource(HTTPChannel.__init__)
    for name in ("asyncore", "pull_trigger", "channel_class", "del_channel", "handle_accept"):
        assert hasattr(BaseWSGIServer, name), name
    assert "headers_finished" in inspect.getsource(HTTPRequestParser)
    assert callable(ErrorTask.execute) and callable(WSGITask.build_response_header)


def test_an_unsupported_waitress_refuses_to_start(monkeypatch):
    monkeypatch.setattr(waitress_adapter, "version", lambda name: "4.0.0")
    with pytest.raises(waitress_adapter.UnsupportedWaitress, match="waitress 4.0.0"):
        waitress_adapter.check_version()


def test_the_installed_granian_has_the_thread_pool_fix():
    found = tuple(int(part) for part in version("granian").split(".")[:3])
    assert found >= granian_server.MIN_GRANIAN


def test_plain_text_paths_are_the_routes_with_plain_text_errors(client):
    """The errors answered before the app runs follow the app's own rule."""
    plain_classes = {resource.__name__ for resource in vars(legacy).values()
                     if getattr(resource, "plain_text_errors", False)}
    routes = falcon.inspect.inspect_routes(client.app)
    assert {route.path for route in routes if route.class_name in plain_classes} \
        == set(common.PLAIN_TEXT_PATHS)


def test_granian_missing_or_too_old_is_a_clear_error(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    from app.serving import StartupError

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(granian_server, "version", missing)
    with pytest.raises(StartupError, match=r"pip install ./client '\.\[fast\]'"):
        granian_server.check_available()
    monkeypatch.setattr(granian_server, "version", lambda name: "2.7.8")
    with pytest.raises(StartupError, match="granian 2.7.8 is too old"):
        granian_server.check_available()


def test_granian_does_not_warn_about_the_default_threads(started):
    """Granian calls more threads than twice the cores "quite high" and suggests
    an option Karmchari does not have; its threads mostly wait, so that warning
    would only mislead (this machine has fewer than 8 cores: 16 is "too many")."""
    service = started("granian", "--threads", "16")
    assert call(service.url, "GET", "/healthz").status == 200
    assert "Listening at" in service.log()
    assert "quite high" not in service.log()
