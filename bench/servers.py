"""The processes a benchmark runs against: a throwaway Redis on a unix socket
(and, for the Go service, on 127.0.0.2:6379), ``karmchari serve`` under
waitress or Granian (real HTTP on 127.0.0.1), and the Go service it replaces."""

from __future__ import annotations

import ipaddress
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

from bench import ROOT

# The Go service always uses redis:6379 (its flags are ignored); the benchmark's
# Redis listens there when the host name "redis" names a loopback address.
GO_REDIS_PORT = 6379
GO_PORT = 51463


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or failed; the message says what."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchRedis:
    """``redis-server`` listening on a unix socket in a temporary directory,
    with persistence off: it exists for one benchmark run. With ``tcp_host``
    it also listens on that loopback address, port 6379, for a client that
    can only use TCP (the Go service)."""

    def __init__(self, tcp_host: str | None = None) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise BenchError("redis-server is not installed: sudo apt-get install redis-server")
        if tcp_host is not None and not ipaddress.ip_address(tcp_host).is_loopback:
            raise BenchError(f"{tcp_host} is not a loopback address")
        self.binary = binary
        self.tcp_host = tcp_host
        self.dir = Path(tempfile.mkdtemp(prefix="karmchari-bench-"))
        self.socket_path = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        if self.tcp_host is None:
            raise BenchError("this Redis has no TCP listener")
        return f"redis://{self.tcp_host}:{GO_REDIS_PORT}/0"

    def client(self, **options) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), decode_responses=True,
                           socket_timeout=60, **options)

    def start(self) -> BenchRedis:
        listen = ["--port", "0"]
        if self.tcp_host is not None:
            listen = ["--bind", self.tcp_host, "--port", str(GO_REDIS_PORT)]
        self.process = subprocess.Popen(
            [self.binary, *listen, "--unixsocket", str(self.socket_path),
             "--unixsocketperm", "700", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    self._check_tcp_listener()
                    return self
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.dir / "redis.log"
                raise BenchError("redis-server did not start: "
                                 + (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(0.05)

    def _check_tcp_listener(self) -> None:
        """The TCP address must reach this very server (same run id), not
        another Redis that happens to listen there."""
        if self.tcp_host is None:
            return
        ours = self.client().info("server")["run_id"]
        try:
            tcp = redis.Redis(host=self.tcp_host, port=GO_REDIS_PORT, socket_timeout=5)
            theirs = tcp.info("server")["run_id"]
            tcp.close()
        except redis.exceptions.RedisError as error:
            self.close()
            raise BenchError(f"Redis does not answer on {self.tcp_host}:{GO_REDIS_PORT}: "
                             f"{error}") from None
        if theirs != ours:
            self.close()
            raise BenchError(f"{self.tcp_host}:{GO_REDIS_PORT} is another Redis than the "
                             "benchmark's own; refusing to use it")

    def version(self) -> str:
        info = self.client().info("server")
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return f"redis {info['redis_version']}"

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BenchRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(process: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class BenchService:
    """``karmchari serve`` from this checkout on a free loopback port, with
    its default settings except those given. ``KARMCHARI_*`` variables of
    the caller's environment are dropped so every run measures the same thing.

    ``server`` is given to ``karmchari serve --server`` (waitress, granian)."""

    name = "karmchari"
    ready_path = "/readyz"  # answers 200 once the service can serve

    def __init__(self, redis_url: str, *, threads: int = 16, workers: int = 1,
                 log_dir: Path | None = None, server: str = "waitress",
                 max_waiters: int = 0) -> None:
        self.port = free_port()
        self.threads = threads
        self.workers = workers
        self.server = server
        self.args = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), "--redis-url", redis_url,
                     "--threads", str(threads), "--workers", str(workers), "--server", server]
        if max_waiters:  # 0: the service's default, half the threads
            self.args += ["--max-waiters", str(max_waiters)]
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"serve-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # added to the environment of the service

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BenchService:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")} | self.env
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{' '.join(self.args[1:])} did not become ready:\n"
                                 + self.log_tail())
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The processes that serve requests: the worker processes when the
        server has any (``--workers`` > 1, or Granian's), else the one process."""
        if self.process is None:
            return []
        children = _children(self.process.pid)
        if self.server == "waitress" and self.workers == 1 or not children:
            return [self.process.pid]
        return children

    def all_pids(self) -> list[int]:
        """Every process of the service (its CPU time is the service's)."""
        if self.process is None:
            return []
        found, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            queue += _children(pid)
        return found

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() \
            else ""

    def stop(self) -> None:
        _stop(self.process, grace=40)

    def __enter__(self) -> BenchService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GoService:
    """The Go service Karmchari replaces, from a binary built from its public
    source (docs/benchmarks.md says how). It ignores its flags: it listens on
    port 51463 of every interface and uses the Redis at ``redis:6379``, so the
    host name ``redis`` must name the loopback address where the benchmark's
    own Redis listens (a line in /etc/hosts). Nothing else is checked or
    changed: if ``redis`` named another server, it is refused before start."""

    server = "go"
    workers = 1
    threads = 0

    def __init__(self, binary: Path, redis_host: str, probe_id: str,
                 log_dir: Path | None = None) -> None:
        self.binary = Path(binary).resolve()
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise BenchError(f"--go-binary {binary}: not an executable file")
        try:
            resolved = socket.gethostbyname("redis")
        except OSError:
            resolved = None
        if resolved != redis_host:
            raise BenchError(
                f"the Go service always connects to redis:6379; the host name 'redis' must "
                f"name {redis_host}, where the benchmark's Redis listens (it names "
                f"{resolved or 'nothing'}): add the line '{redis_host} redis' to /etc/hosts")
        self.port = GO_PORT
        self.probe_id = probe_id
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / "go-service.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GoService:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BenchError(f"port {self.port} is in use: the Go service cannot listen")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(self.binary)], cwd=self.log_path.parent,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"{self.base_url}/jobState?id={self.probe_id}"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("the Go service did not answer:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    all_pids = pids

    def stop(self) -> None:
        _stop(self.process, grace=20)

    def __enter__(self) -> GoService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
