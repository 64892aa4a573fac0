"""The Dockerfile and compose.yaml agree with the command line they run.

No container engine is needed: the commands are parsed by the real parser and
turned into the settings ``karmchari serve`` would use.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

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


def test_image_is_slim_and_unprivileged():
    bases = [value.split()[0] for key, value in dockerfile_instructions() if key == "FROM"]
    assert bases and all(re.fullmatch(r"python:[\d.]+-slim", base) for base in bases)
    assert instruction("USER") not in ("root", "0")


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
    assert redis["image"].startswith("redis:7")
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
