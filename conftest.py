"""Shared fixtures: every test runs against a real Redis server.

``REDIS_URL`` (a CI service) is used when set; otherwise one throwaway
``redis-server`` (or ``valkey-server``) is started on a free port in a
temporary directory. Each test gets its own key prefix, so tests never flush a
server, and nothing is ever deleted from a Redis the tests did not start.
No Redis at all is a failure, never a skip.

Under pytest-xdist each worker process is a session of its own: it starts its
own Redis (or, with ``REDIS_URL``, shares it under prefixes of its own).
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from falcon import testing

from app.app import create_app
from app.config import Config
from app.store import JobStore, connect
from app.store.keys import KeySchema
from karmchari_client import Client
from tests.live import SERVERS, LiveClient
from tests.servers import RedisProcess, ServiceProcess, forbid_the_default_port

# Modules whose module-scoped fixtures start something costly (a browser, a
# cluster, a venv with the client's wheel, Sentinels): under pytest-xdist
# (``--dist loadgroup``) all their tests go to one worker, so it starts once.
# Every other test goes wherever a worker is free.
ONE_WORKER = {
    "test_dashboard_browser.py": "browser",
    "test_cluster.py": "cluster",
    "test_cluster_slots.py": "cluster-slots",
    "test_sentinel.py": "sentinel",
    "test_client_distribution.py": "client-distribution",
    "test_writes_via_scripts.py": "writes-via-scripts",
}


# Modules with the longest single tests (a schemathesis run, a venv build, many
# CLI subprocesses, Hypothesis): run first, so that no worker starts one of them
# when the others are already done.
LONG_FIRST = ("test_openapi.py", "test_client_distribution.py", "test_stateful.py",
              "test_schemas_fast_path.py", "test_cli.py", "test_cli_scripts.py")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (tox): two workers per CPU. Many tests wait rather than
    compute (a service starting or draining, a frozen Redis, a heartbeat, a
    backoff); on this 2-core machine 4 workers ran the suite in 335 s where 2
    took 462 s, in the same window."""
    return 2 * (os.cpu_count() or 1)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the groups of ONE_WORKER, each sent whole to
    one worker. xdist forms its groups from ``xdist_group`` marks by renaming
    the test ids, which pytest 9 no longer lets it do: its groups were never
    formed, each module above went to both workers and started its costly
    fixtures twice."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = ONE_WORKER.get(nodeid.split("::", 1)[0].rsplit("/", 1)[-1])
            return f"group:{group}" if group else nodeid

    return OneWorkerGroups(config, log)


def pytest_collection_modifyitems(items):
    # A stable sort: each module's tests keep their order.
    rank = {name: n for n, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _test_client_names_localhost() -> None:
    """Without tokens the app answers only for its own host names (app/browser_guard.py);
    falcon's test client names falconframework.org unless told: localhost instead."""
    from falcon.testing import client as falcon_client
    for function in (falcon_client.simulate_request, falcon_client._simulate_request_asgi):
        defaults = function.__defaults__ or ()
        function.__defaults__ = tuple("localhost" if d == testing.DEFAULT_HOST else d
                                      for d in defaults)


_test_client_names_localhost()
# No test listens on 51463, where the user's own service may run (tests/servers.py).
forbid_the_default_port()


@pytest.fixture(scope="session")
def redis_url():
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        try:
            redis.Redis.from_url(url, socket_timeout=5).ping()
        except redis.exceptions.RedisError as error:
            pytest.fail(f"REDIS_URL={url} does not answer: {error}")
        yield url
        return
    try:
        server = RedisProcess().start()
    except RuntimeError as error:
        pytest.fail(f"no Redis server for the tests: {error}")
    yield server.url
    server.close()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# This process's part of every shared name: xdist workers, and concurrent runs
# against one REDIS_URL, never clear each other's keys.
RUN = uuid.uuid4().hex[:8]


def live_prefix(server: str) -> str:
    return f"live{server}{RUN}"


@pytest.fixture
def key_prefix(request, redis_client):
    """A fresh key namespace; its keys are deleted after the test. A test
    against a live server (``live_client``) shares that server's namespace."""
    live = "live_client" in request.fixturenames or "live_services" in request.fixturenames
    server = live and request.node.callspec.params.get("server")
    prefix = live_prefix(server) if server else "t" + uuid.uuid4().hex[:12]
    yield prefix
    for key in redis_client.scan_iter(match=f"{{{prefix}:*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def config(redis_url, key_prefix):
    return Config(redis_url=redis_url, key_prefix=key_prefix, threads=8)


@pytest.fixture
def store(config):
    client = connect(config.redis_url, max_connections=64)
    yield JobStore(client, history_cap=config.history_cap,
                   retention_seconds=config.retention_seconds,
                   keys=KeySchema(config.key_prefix))
    client.close()


@pytest.fixture
def client(config, store):
    """A Falcon test client of the whole app on the real store."""
    return testing.TestClient(create_app(config, store))


@pytest.fixture
def live_service(redis_url, key_prefix):
    """``karmchari serve`` as a subprocess on a free port."""
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    yield service
    service.stop()


@pytest.fixture
def url(live_service):
    """The base URL of ``live_service``, for the ``karmchari`` command's ``--url``."""
    return live_service.url


@pytest.fixture
def api(url):
    """The client library's ``Client`` on ``live_service``."""
    client = Client(url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def live_services(redis_url):
    """``karmchari serve --server NAME`` processes, started at first use with the
    given settings (``KARMCHARI_*``) and kept for the session."""
    started: dict = {}

    def service(server: str, **settings) -> ServiceProcess:
        key = (server, tuple(sorted(settings.items())))
        if key not in started:
            env = {f"KARMCHARI_{name.upper()}": str(value) for name, value in settings.items()}
            started[key] = ServiceProcess("--server", server, "--redis-url", redis_url,
                                          env=env).start()
        return started[key]

    yield service
    for process in started.values():
        process.terminate()  # all drain at once: the tail of each worker's run
    for process in started.values():
        process.stop()
        process.log_path.unlink(missing_ok=True)


@pytest.fixture(params=SERVERS)
def server(request):
    """Each HTTP server ``karmchari serve`` supports."""
    return request.param


@pytest.fixture
def live_client(server, live_services, key_prefix):
    """The ``client`` interface over real HTTP to ``karmchari serve --server``
    (the settings of the ``config`` fixture), once per server."""
    service = live_services(server, key_prefix=key_prefix, threads=8)
    return LiveClient(service.url)
