"""``karmchari serve`` as a real subprocess: the embedded default store, the
old command line, and a graceful stop on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from app.store.keys import KeySchema
from tests.live import SERVERS
from tests.servers import ROOT, RedisProcess, ServiceProcess, karmchari_command
from tests.waiting import long_polls_waiting

EMBEDDED_LINE = re.compile(r"embedded store: started (?P<binary>\S+) \S+ \(pid (?P<pid>\d+)\) "
                           r"at unix://(?P<socket>\S+), AOF .* in (?P<dir>\S+)$")


def post_form(service: ServiceProcess, path: str, body: str) -> tuple[int, str]:
    request = urllib.request.Request(service.url + path, data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def read_state(service: ServiceProcess, job_id: str) -> str:
    with urllib.request.urlopen(f"{service.url}/jobState?id={job_id}", timeout=10) as response:
        return response.read().decode()


def register(service: ServiceProcess) -> str:
    status, text = post_form(service, "/registerJob", "type=teams")
    assert status == 200, text
    return text.removeprefix("Created! id = ")


def embedded_line(service: ServiceProcess) -> re.Match:
    """The one log line that says what was started where."""
    started = [line for line in service.log().splitlines() if "started" in line]
    assert len(started) == 1, service.log()
    match = EMBEDDED_LINE.search(started[0])
    assert match, started[0]
    return match


def tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def embedded_service(data_dir):
    service = ServiceProcess("--data-dir", str(data_dir)).start()
    yield service
    service.stop()


def test_embedded_default_says_what_it_started_where(embedded_service, data_dir):
    line = embedded_line(embedded_service)
    assert Path(line["binary"]).name in ("redis-server", "valkey-server")
    assert line["dir"] == str(data_dir)
    assert line["socket"] == str(data_dir / "redis.sock")
    assert (data_dir / "appendonlydir").is_dir() or (data_dir / "karmchari.aof").exists()


def test_embedded_store_listens_on_a_unix_socket_only(embedded_service):
    line = embedded_line(embedded_service)
    pid = int(line["pid"])
    assert not socket_inodes(pid) & tcp_listening_inodes()
    client = redis.Redis(unix_socket_path=line["socket"], decode_responses=True)
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()


@pytest.mark.parametrize("server", SERVERS)
def test_jobs_survive_a_restart_of_serve(data_dir, server):
    """The embedded store, on each HTTP server."""
    first = ServiceProcess("--server", server, "--data-dir", str(data_dir)).start()
    try:
        job_id = register(first)
        assert post_form(first, "/jobState", f"id={job_id}&command=pause") == \
            (200, f"{job_id} -- pause")
        store_pid = int(embedded_line(first)["pid"])
    finally:
        assert first.stop() == 0
    assert not process_exists(store_pid), "the embedded store outlived karmchari serve"

    second = ServiceProcess("--server", server, "--data-dir", str(data_dir)).start()
    try:
        embedded_line(second)  # a store of its own, started again
        assert read_state(second, job_id) == f"{job_id} -- pause"
    finally:
        assert second.stop() == 0


@pytest.fixture(scope="module")
def plain_redis():
    """A Redis of this module's own, to reach by -shost HOST:PORT (database 0)."""
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.mark.parametrize("form", ["old flags, no subcommand", "old flags", "long flags",
                                  "environment"])
def test_the_old_and_new_command_lines(plain_redis, form):
    service = ServiceProcess()
    port, shost = str(service.port), f"127.0.0.1:{plain_redis.port}"
    service.args = {
        "old flags, no subcommand": ["-port", port, "-shost", shost],
        "old flags": ["serve", "-port", port, "-shost", shost],
        "long flags": ["serve", "--port", port, "--shost", shost],
        "environment": ["serve"],
    }[form]
    if form == "environment":
        service.env.update(KARMCHARI_PORT=port, KARMCHARI_SHOST=shost)
    service.start()
    try:
        job_id = register(service)
        assert plain_redis.client().hget(KeySchema().for_job(job_id).job(job_id), "type") == \
            "teams"
        assert "embedded store" not in service.log()
    finally:
        assert service.stop() == 0


def test_sigterm_answers_a_long_poll_in_flight_and_exits_0(live_service):
    job_id = register(live_service)
    url = urllib.parse.urlsplit(live_service.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    # A first request proves the service has accepted this connection.
    connection.request("GET", "/healthz")
    assert connection.getresponse().read() == b"ok"
    connection.request("GET", f"/v1/jobs/{job_id}?wait=30")
    long_polls_waiting(live_service.url)
    live_service.process.send_signal(signal.SIGTERM)
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["id"] == job_id
    connection.close()
    assert live_service.process.wait(30) == 0
    assert "shutting down" in live_service.log()


def test_a_port_in_use_is_a_clear_error(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([*karmchari_command(), "serve", "--port", str(port),
                              "--redis-url", redis_url], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert run.returncode == 2
    assert f"karmchari: cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_bad_environment_value_is_a_clear_error():
    run = subprocess.run([*karmchari_command(), "serve", "--port", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KARMCHARI_THREADS": "many"})
    assert run.returncode == 2
    assert run.stderr.strip() == "karmchari: KARMCHARI_THREADS: not a number: 'many'"


def test_an_embedded_store_that_cannot_start_is_a_clear_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    run = subprocess.run([*karmchari_command(), "serve", "--port", "0",
                          "--data-dir", str(not_a_directory)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith("karmchari: cannot start the embedded store: ")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_several_worker_processes_share_the_port_and_stop_on_sigterm(redis_url, key_prefix,
                                                                     server):
    service = ServiceProcess("--server", server, "--redis-url", redis_url, "--workers", "2",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    try:
        job_ids = [register(service) for _ in range(10)]
        assert all(read_state(service, job_id) == f"{job_id} -- start" for job_id in job_ids)
        assert "2 processes" in service.log()
    finally:
        assert service.stop() == 0


def test_no_test_can_take_the_default_port():
    """The guard conftest.py installs: the user's own service may hold 51463, so
    neither a bind to it nor a ``serve`` without a port gets as far as trying."""
    with socket.socket() as sock, pytest.raises(RuntimeError, match="default port 51463"):
        sock.bind(("127.0.0.1", 51463))
    with pytest.raises(RuntimeError, match="without a port"):
        subprocess.run([*karmchari_command(), "serve", "--redis-url", "redis://127.0.0.1:1"],
                       cwd=ROOT, env={k: v for k, v in os.environ.items()
                                      if k != "KARMCHARI_PORT"}, timeout=60)
    with pytest.raises(RuntimeError, match="without a port"):  # the old form means serve too
        subprocess.run([*karmchari_command(), "-shost", "127.0.0.1:1"], cwd=ROOT, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "KARMCHARI_PORT"})
    assert subprocess.run([*karmchari_command(), "--help"], cwd=ROOT, capture_output=True,
                          timeout=60).returncode == 0  # the client's commands are not serve
