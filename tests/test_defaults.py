"""What ``karmchari serve`` runs when no server or process count is given:
Granian where it is installed and runs, one process per CPU on Linux."""

from __future__ import annotations

import sys
import urllib.request

import pytest

from app.config import Config
from app.serving import defaults
from tests.servers import ServiceProcess

LINUX = sys.platform.startswith("linux")


def test_the_defaults_are_auto():
    config = Config()
    assert (config.server, config.workers) == ("auto", 0)


def test_auto_is_granian_where_it_runs_and_one_process_per_cpu():
    # The test extra installs Granian, which runs on Linux and macOS.
    resolved = defaults.resolve(Config())
    assert resolved.server == ("granian" if sys.platform != "win32" else "waitress")
    expected = min(defaults.usable_cpus(), defaults.MAX_AUTO_WORKERS) if LINUX else 1
    assert resolved.workers == expected >= 1


@pytest.mark.parametrize("server", ["waitress", "granian"])
def test_an_explicit_choice_is_kept(server):
    resolved = defaults.resolve(Config(server=server, workers=3))
    assert (resolved.server, resolved.workers) == (server, 3)


def test_auto_workers_never_exceed_the_cap(monkeypatch):
    monkeypatch.setattr(defaults, "usable_cpus", lambda: 96)
    assert defaults.auto_workers() == (defaults.MAX_AUTO_WORKERS if LINUX else 1)


def test_serve_with_no_choices_runs_what_the_defaults_say(redis_url):
    """The quick start's ``karmchari serve``: the log names the server and the
    process count, and it answers."""
    expected = defaults.resolve(Config())
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_SERVER": "", "KARMCHARI_WORKERS": ""}).start()
    try:
        processes = f"{expected.workers} process{'es' if expected.workers > 1 else ''}"
        log = service.log_with("karmchari listening on")
        assert f"({expected.server}, 16 threads, {processes}" in log, log
        with urllib.request.urlopen(service.url + "/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        assert service.stop() == 0
