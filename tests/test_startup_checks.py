"""Start-up checks of ``karmchari serve``: the Redis version, and a warning
when Redis may evict keys (SPEC §5)."""

from __future__ import annotations

import pytest

from app.serving import StartupError, check_version
from tests.servers import RedisProcess, ServiceProcess

EVICTION_WARNING = "maxmemory-policy is allkeys-lru, not noeviction"


@pytest.mark.parametrize("flavor,version", [
    ("redis", "7.0.0"), ("redis", "7.0.15"), ("redis", "7.2.4"), ("redis", "7.4.1"),
    ("redis", "8.0.2"), ("redis", "10.0.0"), ("redis", "255.255.255"),
    ("valkey", "7.2.5"), ("valkey", "8.1.1"), ("valkey", "10.0.0"),
])
def test_supported_versions_start(flavor, version):
    check_version(flavor, version)


@pytest.mark.parametrize("flavor,version,message", [
    ("redis", "6.2.14", "Redis 6.2.14 is too old: Karmchari needs Redis 7.0 or newer"),
    ("redis", "6.0.0", "Redis 6.0.0 is too old"),
    ("redis", "5.0.14", "Redis 5.0.14 is too old"),
    ("redis", "2.8.24", "Redis 2.8.24 is too old"),
    ("valkey", "7.0.0", "Valkey 7.0.0 is too old: Karmchari needs Valkey 7.2 or newer"),
    ("redis", None, "Redis (unknown version) is too old"),
    ("redis", "", "Redis (unknown version) is too old"),
    ("redis", "unstable", "Redis unstable is too old"),
])
def test_older_servers_are_refused_with_a_clear_message(flavor, version, message):
    with pytest.raises(StartupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_version(flavor, version)


def test_server_info_of_a_real_server(store, redis_client):
    info = store.server_info()
    server = redis_client.info("server")
    assert info["flavor"] in ("redis", "valkey")
    assert info["version"] == (server.get("valkey_version") or server["redis_version"])
    check_version(info["flavor"], info["version"])


@pytest.mark.parametrize("policy", ["allkeys-lru", "noeviction"])
def test_serve_warns_when_redis_may_evict(policy, key_prefix):
    server = RedisProcess("--maxmemory-policy", policy).start()
    service = ServiceProcess("--redis-url", server.url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix})
    try:
        service.start()
    finally:
        service.stop()
        server.close()
    log = service.log()
    assert "karmchari listening on" in log  # a warning, not a refusal
    warnings = [line for line in log.splitlines() if "maxmemory-policy" in line]
    if policy == "noeviction":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "WARNING" in warnings[0]
        assert EVICTION_WARNING in warnings[0]


def test_an_unreachable_redis_is_named_with_the_options_to_check():
    from app.serving import check_store
    from app.store import JobStore, connect
    from tests.servers import free_port

    store = JobStore(connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5))
    with pytest.raises(StartupError, match=r"Redis is not reachable after 0 s: .*"
                                           r"\(check --redis-url, --shost or --redis-sentinel; "
                                           r"--store-wait sets how long to wait\)"):
        check_store(store, wait_seconds=0)


def test_a_port_in_use_is_told_before_the_store_is_awaited(tmp_path):
    """Say the Go service still holds 51463: the answer comes at once, not after
    starting a store or waiting 30 s for a Redis that is down."""
    import socket
    import subprocess

    from tests.servers import free_port, karmchari_command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*karmchari_command(), "serve", "--port", str(port),
             "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
            capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert result.returncode == 2
    assert f"karmchari: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in result.stderr
    assert "waiting for Redis" not in result.stderr


def _serve(tmp_path, *args: str, timeout: float = 60):
    import subprocess

    from tests.servers import free_port, karmchari_command
    return subprocess.run([*karmchari_command(), "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "localhost", "http://127.0.0.1:6379/0"])
def test_a_redis_url_without_its_scheme_is_one_clear_line(tmp_path, url):
    result = _serve(tmp_path, "--redis-url", url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("karmchari: --redis-url (KARMCHARI_REDIS_URL) must start with "
                               "redis://, rediss://, unix://")
    assert repr(url) in lines[0]


def test_an_unreachable_redis_at_start_is_a_few_lines_then_one_error(tmp_path):
    """Not a warning a second: tries further and further apart, then one error
    that names the store and the option that sets the wait."""
    from tests.servers import free_port
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = _serve(tmp_path, "--redis-url", url, "--store-wait", "8")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert 2 <= len(warnings) <= 5, output
    assert all(f"waiting for Redis at {url}" in line for line in warnings), output
    final = result.stderr.strip().splitlines()[-1]
    assert final.startswith(f"karmchari: Redis at {url} is not reachable after 8 s: ")
    assert "--store-wait sets how long to wait" in final
    assert "Traceback" not in output
