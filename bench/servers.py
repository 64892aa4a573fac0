"""The processes a benchmark runs against: a throwaway Redis on a unix socket
and ``karmchari serve`` (real waitress, real HTTP on 127.0.0.1)."""

from __future__ import annotations

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


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or failed; the message says what."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchRedis:
    """``redis-server`` listening only on a unix socket in a temporary
    directory, with persistence off: it exists for one benchmark run."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise BenchError("redis-server is not installed: sudo apt-get install redis-server")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="karmchari-bench-"))
        self.socket_path = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def client(self, **options) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), decode_responses=True,
                           socket_timeout=60, **options)

    def start(self) -> BenchRedis:
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket_path),
             "--unixsocketperm", "700", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.dir / "redis.log"
                raise BenchError("redis-server did not start: "
                                 + (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(0.05)

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


class BenchService:
    """``karmchari serve`` from this checkout on a free loopback port, with
    its default settings except those given. ``KARMCHARI_*`` variables of
    the caller's environment are dropped so every run measures the same thing."""

    def __init__(self, redis_url: str, *, threads: int = 16, workers: int = 1,
                 log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.threads = threads
        self.workers = workers
        self.args = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), "--redis-url", redis_url,
                     "--threads", str(threads), "--workers", str(workers)]
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"serve-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BenchService:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("karmchari serve did not become ready:\n" + self.log_tail())
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The processes that serve requests: the forked children with
        ``--workers`` > 1, else the one process."""
        if self.process is None:
            return []
        if self.workers == 1:
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() \
            else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> BenchService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
