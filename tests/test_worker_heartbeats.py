"""The worker library's shared heartbeats (``karmchari_client.heartbeats``):
all the Workers of a process send one ``POST /v1/heartbeats`` per interval,
against a live ``karmchari serve`` on real Redis. Requests are counted at the
service (``/metrics``) and in the process (a counting Client), never timed."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import urllib.parse
import urllib.request

import pytest

from karmchari_client import Client, JobEnded, JobKilled, Worker
from karmchari_client.heartbeats import Heartbeater
from tests.live import SERVERS
from tests.servers import ServiceProcess
from tests.test_worker import counting_heartbeats, run_checkpoints
from tests.waiting import eventually

BATCH_ROUTE = "/v1/heartbeats"
ONE_ROUTE = "/v1/jobs/{job_id}/heartbeat"


def requests_to(service_url: str, route: str) -> int:
    """POSTs the service answered on ``route``, whatever their status."""
    with urllib.request.urlopen(service_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = re.compile(r'^karmchari_http_requests_total\{(.*)\} (\S+)$', re.M)
    return int(sum(float(value) for labels, value in pattern.findall(text)
                   if f'route="{route}"' in labels and 'method="POST"' in labels))


def start_workers(url: str, count: int, interval: float, **options) -> list[Worker]:
    workers = [Worker.register("teams", url, heartbeat_interval=interval, long_poll=False,
                               **options) for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def command_all(api: Client, command: str, workers: list[Worker], per_request: int = 500) -> None:
    for start in range(0, len(workers), per_request):
        api.command_many(command, ids=[w.job_id for w in workers[start:start + per_request]])


def kill_all(api: Client, workers: list[Worker], per_request: int = 500) -> None:
    live = [w for w in workers if not w.ended()]
    command_all(api, "kill", live, per_request)
    for worker in live:
        eventually(lambda w=worker: w.state == "kill", timeout=60)
    for worker in workers:
        worker.finish(JobKilled(worker.job_id) if worker.state == "kill" else None)


@pytest.fixture
def service_with(redis_url, key_prefix):
    started: list[ServiceProcess] = []

    def start(*args: str) -> ServiceProcess:
        service = ServiceProcess("--redis-url", redis_url, *args,
                                 env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_500_workers_of_a_process_send_one_heartbeat_request_per_interval(service_with,
                                                                          server):
    service = service_with("--server", server)
    sent = counting_heartbeats(service.url)
    api = Client(service.url)
    workers = start_workers(service.url, 500, interval=0.5)
    ids = sorted(w.job_id for w in workers)
    try:
        assert Heartbeater.shared(service.url, None).jobs() == 500
        begun = len(sent.batches)
        eventually(lambda: len(sent.batches) >= begun + 4, timeout=60)
        # The first batch may have been collected while the last jobs joined.
        for batch in sent.batches[begun + 1:begun + 4]:
            assert sorted(batch) == ids  # every job, in one request
        # At the service: one request per job when it started, none since.
        assert requests_to(service.url, ONE_ROUTE) == 500
        eventually(lambda: requests_to(service.url, BATCH_ROUTE) >= begun + 4)
        # A command reaches every job through the batch's answer.
        kill_all(api, workers)
    finally:
        api.close()
    assert Heartbeater.shared(service.url, None).jobs() == 0
    assert all(api.get(w.job_id)["observed_state"] == "kill" for w in workers)


def test_pause_resume_and_kill_reach_each_worker_of_the_batch(live_service):
    api = Client(live_service.url)
    workers = start_workers(live_service.url, 20, interval=0.3)
    loops = [run_checkpoints(w, 1) for w in workers]
    try:
        api.command_many("pause", ids=[w.job_id for w in workers])
        for worker in workers:  # learned, obeyed, and acknowledged
            eventually(lambda w=worker: api.get(w.job_id)["observed_state"] == "pause")
        frozen = [steps[0] for steps, _, _ in loops]

        api.command_many("start", ids=[w.job_id for w in workers[:10]])
        api.command_many("kill", ids=[w.job_id for w in workers[10:]])
        for worker, (steps, ended, threads) in zip(workers, loops, strict=True):
            if worker in workers[:10]:
                eventually(lambda s=steps, w=worker: s[0] > frozen[workers.index(w)])
                eventually(lambda w=worker: api.get(w.job_id)["observed_state"] == "start")
            else:
                threads[0].join(15)
                assert len(ended) == 1 and isinstance(ended[0], JobKilled)
        assert requests_to(live_service.url, ONE_ROUTE) == 20  # the starts only
    finally:
        kill_all(api, workers)
        api.close()
    for worker in workers:
        assert api.get(worker.job_id)["observed_state"] == "kill"


def test_a_job_that_vanished_ends_its_worker_alone(live_service, store, redis_client):
    api = Client(live_service.url)
    workers = start_workers(live_service.url, 8, interval=0.3)
    victim, others = workers[0], workers[1:]
    try:
        # Gone from under its worker (as after a restore of an older Redis).
        redis_client.delete(store.keys.for_job(victim.job_id).job(victim.job_id))
        eventually(lambda: victim.state is None)
        with pytest.raises(JobEnded) as ended:
            victim.checkpoint()
        assert ended.value.state is None

        api.command_many("pause", ids=[w.job_id for w in others])
        for worker in others:
            eventually(lambda w=worker: w.state == "pause")
    finally:
        victim.finish()
        kill_all(api, others)
        api.close()


def test_a_report_the_service_refuses_concerns_its_own_job_only(service_with, caplog):
    caplog.set_level("WARNING", logger="karmchari_client")
    service = service_with("--max-text-chars", "20")
    sent = counting_heartbeats(service.url)
    api = Client(service.url)
    workers = start_workers(service.url, 6, interval=0.3)
    victim, others = workers[0], workers[1:]
    try:
        victim.checkpoint(message="far too long for this service")  # refused: 400
        begun = len(sent.batches)
        # Found job by job, then sent on its own; the others stay in one batch.
        eventually(lambda: any(sorted(b) == sorted(w.job_id for w in others)
                               for b in sent.batches[begun:]))
        assert any(victim.job_id in r.getMessage() for r in caplog.records)

        api.command_many("pause", ids=[w.job_id for w in workers])
        for worker in others:
            eventually(lambda w=worker: w.state == "pause")
        assert victim.state == "start"  # its heartbeats are refused: nothing learned

        victim.checkpoint(message="short")  # accepted again: it learns at once
        eventually(lambda: victim.state == "pause")
    finally:
        kill_all(api, workers)
        api.close()


def test_past_the_services_batch_limit_the_heartbeats_are_split(service_with):
    service = service_with("--max-batch", "7")
    sent = counting_heartbeats(service.url)
    api = Client(service.url)
    workers = start_workers(service.url, 16, interval=0.3)
    try:
        eventually(lambda: Heartbeater.shared(service.url, None).max_batch == 7)
        learned = len(sent.batches)
        eventually(lambda: len(sent.batches) >= learned + 6)
        assert all(len(batch) <= 7 for batch in sent.batches[learned:])
        command_all(api, "pause", workers, per_request=7)
        for worker in workers:
            eventually(lambda w=worker: w.state == "pause")
        assert requests_to(service.url, ONE_ROUTE) == 16  # the starts only
    finally:
        kill_all(api, workers, per_request=7)
        api.close()


class OldServiceProxy:
    """A real HTTP proxy in front of the service that answers 404 to
    ``POST /v1/heartbeats``, as a service from before that endpoint did."""

    def __init__(self, target: str) -> None:
        parts = urllib.parse.urlsplit(target)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                if self.path.startswith("/v1/heartbeats"):
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    body = json.dumps({"title": "Not Found", "status": 404}).encode()
                    self.send_response(404)
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body, headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_service_without_batch_heartbeats_gets_one_request_per_job(live_service):
    proxy = OldServiceProxy(live_service.url)
    sent = counting_heartbeats(proxy.url)
    api = Client(live_service.url)
    workers = start_workers(proxy.url, 5, interval=0.3)
    try:
        eventually(lambda: requests_to(live_service.url, ONE_ROUTE) >= 5 + 10)
        assert len(sent.batches) == 1  # tried once
        assert not Heartbeater.shared(proxy.url, None).batches
        api.command_many("pause", ids=[w.job_id for w in workers])
        for worker in workers:
            eventually(lambda w=worker: w.state == "pause")
    finally:
        kill_all(api, workers)
        api.close()
        proxy.close()
