"""The Dockerfile and compose.yaml agree with the command line they run.

No container engine is needed: the commands are parsed by the real parser and
turned into the settings ``karmchari serve`` would use, and the lock files the
image installs from are checked against pyproject.toml (pinned, hashed, within
its bounds, Granian included).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.auth import TokenRegistry
from app.cli import build_parser, config_from_args
from app.config import Config
from app.serving import StartupError, check_exposure

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def instruction(name: str) -> str:
    values = [value for key, value in dockerfile_instructions() if key == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def serve_config(argv: list[str], monkeypatch) -> Config:
    for variable in [v for v in os.environ if v.startswith("KARMCHARI_")]:
        monkeypatch.delenv(variable)
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    return config_from_args(args)


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


# An exact Python release on an exact Debian release, optionally with a digest.
EXACT_PYTHON = re.compile(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?")
# The Python of the image, for the markers of the lock (python_full_version < ...).
IMAGE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.16"}
# The lock is universal: it installs on every Python pyproject.toml admits.
PYTHONS = [{"python_version": v.rpartition(".")[0], "python_full_version": v}
           for v in ("3.10.0", "3.11.2", "3.11.9", "3.12.16", "3.13.1", "3.14.0")]


def test_image_is_slim_unprivileged_and_pinned():
    bases = [value.split()[0] for key, value in dockerfile_instructions() if key == "FROM"]
    assert len(bases) == 2 and all(EXACT_PYTHON.fullmatch(base) for base in bases), bases
    assert len(set(bases)) == 1  # the wheels are built on the Python they run on
    version = bases[0].split(":")[1].split("-")[0]
    assert IMAGE_PYTHON["python_full_version"] == version
    assert instruction("USER") not in ("root", "0")


def read_lock(name: str, environment: dict[str, str] = IMAGE_PYTHON) -> dict[str, str]:
    """name -> version of the pins of a pip requirements file with hashes that
    apply on ``environment`` (a universal lock forks some pins by Python version)."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        (pin,) = requirement.specifier
        assert pin.operator == "==", line  # exact versions only
        assert options and all(re.fullmatch(r"sha256:[0-9a-f]{64}", o.strip())
                               for o in options), line
        if requirement.marker is None or requirement.marker.evaluate(environment):
            name = canonicalize_name(requirement.name)
            assert name not in pins, f"{name} pinned twice for {environment}"
            pins[name] = pin.version
    return pins


@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: p["python_full_version"])
def test_lock_pins_every_runtime_dependency_within_its_bounds(python):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["fast"]]
    lock = read_lock("requirements.lock", python)
    # The client is built from client/ in the image: it is in no index, so not locked.
    assert "karmchari-client" not in lock
    assert any(r.name == "karmchari-client" for r in wanted)
    for requirement in wanted:
        if requirement.name == "karmchari-client":
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in requirements.lock"
        version = lock[name]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{name}=={version} does not satisfy {requirement.specifier}"
        if requirement.name == "redis":
            assert "hiredis" in lock  # redis[hiredis]
    # granian: KARMCHARI_SERVER=granian works in the image.
    from app.serving.granian_server import MIN_GRANIAN
    assert tuple(int(p) for p in lock["granian"].split(".")[:3]) >= MIN_GRANIAN


@pytest.mark.slow
def test_lock_installs_from_the_index_with_hashes(tmp_path):
    """What the image's RUN line does, resolved as in an empty venv on this
    machine's Python (--ignore-installed; nothing is installed): every pin
    downloads and matches its hashes, no dependency is missing (under
    --require-hashes an unpinned one is an error), and exactly the pins that
    apply to this Python would be installed, Granian among them."""
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
                          "--ignore-installed", "--require-hashes",
                          "-r", str(ROOT / "requirements.lock"), "--report", str(report)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    installed = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
    assert installed == read_lock("requirements.lock", dict(default_environment()))
    assert "granian" in installed


def test_build_lock_has_the_build_backend_of_both_distributions():
    (version,) = read_lock("requirements-build.lock").values()
    for path in ("pyproject.toml", "client/pyproject.toml"):
        build = tomllib.loads((ROOT / path).read_text())["build-system"]
        (backend,) = [Requirement(r) for r in build["requires"]]
        assert backend.name == "setuptools" and backend.specifier.contains(version)


def test_image_installs_only_from_the_locks():
    runs = [value for key, value in dockerfile_instructions() if key == "RUN"]
    installs = [run for run in runs if "pip install" in run or "pip wheel" in run]
    assert any("--require-hashes -r requirements-build.lock" in run for run in installs)
    assert any("--require-hashes -r /tmp/requirements.lock" in run for run in installs)
    # The two local wheels: no dependency resolution, no index.
    wheels = [run for run in installs if "requirements" not in run]
    assert len(wheels) == 2 and all("--no-deps" in run for run in wheels), wheels
    assert "--no-build-isolation" in wheels[0] and "--no-index" in wheels[1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"requirements.lock", "requirements-build.lock", "client"} & set(ignored)


def test_image_command_is_the_old_command_line(monkeypatch):
    argv = json.loads(instruction("ENTRYPOINT")) + json.loads(instruction("CMD"))
    assert argv[:2] == ["karmchari", "serve"]
    assert "-port" in argv and "-shost" in argv
    config = serve_config(argv[1:], monkeypatch)
    assert (config.port, config.host) == (51463, "0.0.0.0")
    assert config.store_url == "redis://redis:6379/0"
    assert instruction("EXPOSE") == str(config.port)
    # Listening beyond loopback: tokens are required, and enough.
    with pytest.raises(StartupError):
        check_exposure(config, TokenRegistry())
    check_exposure(config, TokenRegistry.load("ops:admin:secret-token-8e7d6c5b"))


def test_health_check_asks_healthz_without_curl(monkeypatch):
    options, _, command = instruction("HEALTHCHECK").partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"] and "urllib.request" in argv[2]
    port = serve_config(json.loads(instruction("CMD")), monkeypatch).port
    assert f"http://127.0.0.1:{port}/healthz" in argv[2]
    assert "--timeout=" in options


def test_compose_runs_the_service_on_a_persistent_redis(compose, monkeypatch):
    redis, service = compose["services"]["redis"], compose["services"]["karmchari"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-[a-z]+)?(@sha256:[0-9a-f]{64})?", redis["image"])
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volume, _, mount = redis["volumes"][0].partition(":")
    assert volume in compose["volumes"] and mount == "/data"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"

    config = serve_config(service["command"], monkeypatch)
    assert config.store_url == "redis://redis:6379/0"
    assert service["ports"] == [f"{config.port}:{config.port}"]
    assert service["environment"]["KARMCHARI_TOKENS"].startswith("${KARMCHARI_TOKENS:?")
