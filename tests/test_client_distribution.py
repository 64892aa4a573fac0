"""``karmchari-client`` on its own: a fresh venv holding only the client's
wheel (built here, offline) runs ``examples/worker.py`` against a live
service, and has none of the server's dependencies."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.servers import ROOT

SERVER_ONLY = ("app", "falcon", "redis", "waitress", "jsonschema", "prometheus_client")


def _source_hash() -> str:
    """What the venv is made from: the client's sources and this Python."""
    digest = hashlib.sha256(sys.executable.encode())
    for path in sorted((ROOT / "client").rglob("*")):
        if path.is_file() and not any(part.endswith((".egg-info", "__pycache__", "build"))
                                      for part in path.relative_to(ROOT / "client").parts):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory) -> Path:
    """A venv with pip (from ensurepip, no network) and the client's wheel, built
    once per test run: in the run's temporary directory (shared by the xdist
    workers), keyed on the client's sources, under a file lock. A module
    fixture was built again whenever the worker ran another module's test in
    between (10-25 s each)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's directory, above each worker's own
    base = shared / f"client-only-{_source_hash()}"
    base.mkdir(exist_ok=True)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        home = base / "venv"
        if not (base / "built").exists():
            _build(base, home)
            (base / "built").touch()
    return home


def _build(base: Path, home: Path) -> None:
    wheels = base / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT / "client")],
                   check=True, timeout=300)
    [wheel] = wheels.glob("karmchari_client-*.whl")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    # Without PYTHONPATH: a source tree on it (client/ with its egg-info) would
    # make pip take the client as installed already.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index",
                    str(wheel)], check=True, timeout=300, env=clean)


def run(home: Path, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    # Outside the repository, so that nothing is imported from the source tree.
    return subprocess.run([str(home / "bin" / argv[0]), *argv[1:]], cwd=home,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"}, **kwargs)


def test_only_the_standard_library(client_venv):
    installed = run(client_venv, "python", "-m", "pip", "list", "--format", "freeze")
    names = {line.split("==")[0].lower() for line in installed.stdout.split()}
    assert "karmchari-client" in names
    assert "karmchari" not in names
    assert not names - {"karmchari-client", "pip", "setuptools"}, names
    for module in SERVER_ONLY:
        found = run(client_venv, "python", "-c", f"import {module}")
        assert found.returncode != 0, f"{module} is importable in the client-only venv"
    imported = run(client_venv, "python", "-c", "import karmchari_client, karmchari_client.cli; "
                   "print(karmchari_client.__file__)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(client_venv)), imported.stdout


def test_client_command_without_the_server(client_venv):
    shown = run(client_venv, "karmchari", "--help")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^ +register ", shown.stdout, re.M)
    assert not re.search(r"^ +(serve|import-legacy) ", shown.stdout, re.M)
    for argv in (["serve"], ["-port", "51463"], ["import-legacy"]):
        refused = run(client_venv, "karmchari", *argv)
        assert refused.returncode == 2, refused
        assert "part of the Karmchari server, which is not installed here" in refused.stderr
        assert "pip install ./client ." in refused.stderr


def test_example_worker_runs_against_a_live_service(client_venv, live_service):
    worked = run(client_venv, "python", str(ROOT / "examples" / "worker.py"),
                 "--url", live_service.url, "--steps", "3", "--step-seconds", "0.05")
    assert worked.returncode == 0, worked.stdout + worked.stderr
    assert "step 3/3 done" in worked.stdout
    job_id = re.search(r"^job ([0-9a-f]{32}) running", worked.stdout, re.M).group(1)
    listed = run(client_venv, "karmchari", "get", job_id, "--json", "--url", live_service.url)
    assert listed.returncode == 0, listed.stderr
    assert '"state": "done"' in listed.stdout


def test_bash_worker_runs_on_the_client_alone(client_venv, live_service):
    worked = subprocess.run(["bash", str(ROOT / "examples" / "worker.sh")], cwd=client_venv,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": f"{client_venv / 'bin'}:/usr/bin:/bin",
                                 "KARMCHARI_URL": live_service.url, "STEPS": "2",
                                 "STEP_SECONDS": "0.05"})
    assert worked.returncode == 0, worked.stdout + worked.stderr
    assert worked.stdout.splitlines()[-1] == "done"
