"""The access log: the batching writer (``--access-log stderr``, the default)
writes the very lines ``logging`` wrote, in request order, and loses none on
a clean shutdown, under waitress and Granian, in one process or several;
``--access-log logging`` hands each line to the ``karmchari.access`` logger;
``off`` writes none."""

from __future__ import annotations

import http.client
import io
import logging
import re
import time

import pytest
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st

from app.access_log import BatchWriter
from app.app import create_app
from app.config import Config
from app.serving import LOG_FORMAT
from tests.live import SERVERS
from tests.servers import ServiceProcess

# The line as the logging format made it, before and after the change.
ACCESS_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO karmchari\.access: remote=127\.0\.0\.1 "
    r'method="(?P<method>[A-Z]+)" path="(?P<path>(?:[^"\\]|\\.)*)" status=(?P<status>\d{3}) '
    r"ms=\d+\.\d request_id=(?P<id>\S+) actor=-\Z")


def access_lines(log: str) -> list[re.Match]:
    lines = [line for line in log.splitlines() if " karmchari.access: " in line]
    matches = [ACCESS_LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
    return [m for m in matches if m]


def get(connection: http.client.HTTPConnection, path: str, request_id: str) -> int:
    connection.request("GET", path, headers={"X-Request-ID": request_id})
    answer = connection.getresponse()
    answer.read()
    return answer.status


def serve(server: str, redis_url: str, key_prefix: str, *args: str) -> ServiceProcess:
    return ServiceProcess("--server", server, "--redis-url", redis_url, *args,
                          env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()


# -- the writer's lines are logging's lines ----------------------------------

@given(st.floats(0, 4e9, allow_nan=False))
def test_the_prefix_is_the_logging_formats(created):
    record = logging.makeLogRecord({"name": "karmchari.access", "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": 'remote=::1 path="/"'})
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    stream = io.StringIO()
    writer = BatchWriter("karmchari.access", stream)
    writer.write(record.created, record.getMessage())
    writer.flush()
    assert stream.getvalue() == logging.Formatter(LOG_FORMAT).format(record) + "\n"


def test_lines_stay_in_order_and_none_is_lost_at_flush():
    stream = io.StringIO()
    writer = BatchWriter("karmchari.access", stream)
    for n in range(5000):
        writer.write(time.time(), f"n={n}")
    writer.flush()
    assert [line.rpartition("n=")[2] for line in stream.getvalue().splitlines()] == \
        [str(n) for n in range(5000)]


# -- served: order, content, escaping, nothing lost on SIGTERM ----------------

@pytest.mark.parametrize("server", SERVERS)
def test_lines_in_request_order_and_all_written_at_shutdown(server, redis_url, key_prefix):
    service = serve(server, redis_url, key_prefix)
    paths = ["/healthz", "/jobState", "/v1/jobs/%0d%0aFORGED%20200%0a", "/no/such\t/route",
             "/v1/jobs/caf%C3%A9", '/v1/jobs/a%22b%5Cc']
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    statuses = [get(connection, paths[n % len(paths)].replace("\t", "%09"), f"order-{n}")
                for n in range(300)]
    connection.close()
    assert service.stop() == 0  # at once: the last lines are still queued
    lines = [m for m in access_lines(service.log()) if m["id"].startswith("order-")]
    assert [m["id"] for m in lines] == [f"order-{n}" for n in range(300)]
    assert [int(m["status"]) for m in lines] == statuses
    shown = [m["path"] for m in lines[:len(paths)]]
    assert shown == ["/healthz", "/jobState", "/v1/jobs/\\r\\nFORGED 200\\n",
                     "/no/such\\t/route", "/v1/jobs/caf\\u00e9", '/v1/jobs/a\\"b\\\\c']
    assert not any(line.startswith("FORGED") for line in service.log().splitlines())


@pytest.mark.parametrize("server", SERVERS)
def test_no_line_lost_by_worker_processes_at_shutdown(server, redis_url, key_prefix):
    """With --workers 2 each process writes its own queue when it stops
    (Granian's workers end with os._exit, as do waitress's forked ones)."""
    service = serve(server, redis_url, key_prefix, "--workers", "2")
    connections = [http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
                   for _ in range(4)]
    for n in range(400):
        assert get(connections[n % 4], "/healthz", f"many-{n}") == 200
    for connection in connections:
        connection.close()
    assert service.stop() == 0
    ids = sorted(m["id"] for m in access_lines(service.log()) if m["id"].startswith("many-"))
    assert ids == sorted(f"many-{n}" for n in range(400))


# -- --access-log logging and off ---------------------------------------------

class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_handler():
    logger = logging.getLogger("karmchari.access")
    handler, level = Collected(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_logging_mode_hands_each_line_to_the_logger(redis_url, key_prefix, store,
                                                     access_handler):
    config = Config(redis_url=redis_url, key_prefix=key_prefix, access_log="logging")
    client = testing.TestClient(create_app(config, store))
    for n in range(3):
        client.simulate_get("/healthz", headers={"X-Request-ID": f"log-{n}"})
    messages = [record.getMessage() for record in access_handler.records]
    assert [re.search(r"request_id=(\S+)", m)[1] for m in messages] == ["log-0", "log-1", "log-2"]
    assert all(record.levelno == logging.INFO for record in access_handler.records)
    assert messages[0].startswith('remote=127.0.0.1 method="GET" path="/healthz" status=200 ')


@pytest.mark.parametrize("mode", ["stderr", "off"])
def test_other_modes_do_not_use_the_logger(redis_url, key_prefix, store, access_handler, mode):
    config = Config(redis_url=redis_url, key_prefix=key_prefix, access_log=mode)
    client = testing.TestClient(create_app(config, store))
    client.simulate_get("/healthz")
    assert access_handler.records == []


@pytest.mark.parametrize("server", SERVERS)
def test_served_logging_mode_writes_the_same_lines(server, redis_url, key_prefix):
    service = serve(server, redis_url, key_prefix, "--access-log", "logging")
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    for n in range(20):
        assert get(connection, "/healthz", f"via-logging-{n}") == 200
    connection.close()
    assert service.stop() == 0
    ids = [m["id"] for m in access_lines(service.log()) if m["id"].startswith("via-logging-")]
    assert ids == [f"via-logging-{n}" for n in range(20)]


@pytest.mark.parametrize("server", SERVERS)
def test_served_off_writes_no_access_line(server, redis_url, key_prefix):
    service = serve(server, redis_url, key_prefix, "--access-log", "off")
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    for n in range(20):
        assert get(connection, "/healthz", f"off-{n}") == 200
    connection.close()
    assert service.stop() == 0
    log = service.log()
    assert "stopped" in log  # the log was written, without access lines
    assert access_lines(log) == []
