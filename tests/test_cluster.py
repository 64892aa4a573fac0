"""Karmchari on a real local Redis Cluster (SPEC §8): three masters started
here, two ``karmchari serve --redis-cluster`` processes on it with no balancer
in front, and the API driven end to end through both."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.crc import key_slot

from app.model import SHARDS
from app.store.keys import KeySchema
from tests.http_calls import call
from tests.servers import ROOT, RedisProcess, ServiceProcess, free_port, karmchari_command
from tests.test_faults import POLL_INTERVAL, assert_valid_path, command, history, register
from tests.waiting import long_polls_waiting

pytestmark = pytest.mark.cluster

SLOTS = 16384


class LocalCluster:
    """Masters on free loopback ports, each in its own temporary directory.
    The cluster bus port is given explicitly: the default (port + 10000) does
    not exist for ports above 55535."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        self.bus_ports = [free_port() for _ in range(masters)]

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for bus_port in self.bus_ports:
            node = RedisProcess("--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                                "--cluster-node-timeout", "2000")
            self.nodes.append(node)
            node.start()
        share = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        first = self.nodes[0].client()
        for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in node.client().execute_command("CLUSTER", "INFO")
                      for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not come up")
            time.sleep(0.05)
        return self

    def url(self, node: int = 0) -> str:
        return f"redis://127.0.0.1:{self.nodes[node].port}"

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster.from_url(self.url(), decode_responses=True,
                                                   socket_timeout=5)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    try:
        yield local.start()
    finally:
        local.close()


@pytest.fixture(scope="module")
def services(cluster):
    """Two services on the cluster, each given a different node to start from."""
    started: list[ServiceProcess] = []
    try:
        for node in (0, 1):
            service = ServiceProcess("--redis-url", cluster.url(node), "--redis-cluster")
            started.append(service)
            service.start()
        yield started
    finally:
        for service in started:
            service.stop()
            service.log_path.unlink(missing_ok=True)


def test_the_shards_are_spread_over_every_master(cluster):
    """Otherwise the rest of this file would not cross nodes."""
    client = cluster.client()
    try:
        owners = {client.nodes_manager.get_node_from_slot(key_slot(shard.tag.encode())).name
                  for shard in KeySchema().shards.values()}
    finally:
        client.close()
    assert len(owners) == len(cluster.nodes)


def test_old_endpoints_across_two_services(services):
    one, other = services
    reply = call(one.url, "POST", "/registerJob", form={"type": "teams"})
    assert reply.status == 200, reply.text
    job_id = reply.text.rsplit(" ", 1)[1]
    reply = call(other.url, "POST", "/jobState", form={"id": job_id, "command": "pause"})
    assert (reply.status, reply.text) == (200, f"{job_id} -- pause")
    reply = call(one.url, "GET", f"/jobState?id={job_id}")
    assert (reply.status, reply.text) == (200, f"{job_id} -- pause")
    reply = call(one.url, "POST", "/jobState", form={"id": "0" * 32, "command": "pause"})
    assert (reply.status, reply.text) == (404, "Job not available")


def test_register_with_labels_and_idempotency_key_across_services(services):
    one, other = services
    body = {"type": "export", "name": "nightly", "labels": {"team": "core", "env": "prod"}}
    first = call(one.url, "POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "cluster-1"})
    assert first.status == 201, first.text
    again = call(other.url, "POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "cluster-1"})
    assert (again.status, again.json()["id"]) == (200, first.json()["id"])
    changed = call(other.url, "POST", "/v1/jobs", body={**body, "name": "other"},
                   headers={"Idempotency-Key": "cluster-1"})
    assert changed.status == 422, changed.text
    job = call(other.url, "GET", first.headers["location"]).json()
    assert (job["name"], job["labels"]) == ("nightly", body["labels"])


def test_commands_and_history_across_services(services):
    one, other = services
    job_id = register(one)
    assert command(other, job_id, "pause", reason="maintenance").status == 200
    assert command(one, job_id, "start").status == 200
    stale = call(other.url, "POST", f"/v1/jobs/{job_id}/commands", body={"command": "pause"},
                 headers={"If-Match": '"2"'})
    assert stale.status == 412, stale.text
    assert command(other, job_id, "kill").status == 200
    refused = command(one, job_id, "start")
    assert (refused.status, refused.json()["current_state"]) == (409, "kill")
    entries = history(one, job_id)
    assert_valid_path(entries)
    assert [e["command"] for e in entries] == ["register", "pause", "start", "kill"]
    assert entries[1]["reason"] == "maintenance"
    assert history(other, job_id) == entries


def test_listing_pages_through_every_shard_newest_first(services):
    one, other = services
    label = f"batch-{time.monotonic_ns()}"
    ids = [register(one, labels={"batch": label}) for _ in range(48)]
    assert len({job_id[0] for job_id in ids}) > 8  # many shards, so every node
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"label": f"batch:{label}", "limit": "7", **({"cursor": cursor} if cursor else {})}
        service = (one, other)[pages % 2]  # a cursor from one service works on the other
        page = call(service.url, "GET", "/v1/jobs?" + urllib.parse.urlencode(query)).json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert pages >= 7
    assert command(one, ids[0], "pause").status == 200
    paused = call(other.url, "GET", "/v1/jobs?state=pause&limit=500").json()["jobs"]
    assert ids[0] in {job["id"] for job in paused}


def test_heartbeats_batch_over_every_shard(services):
    one, other = services
    ids = [register(one, heartbeat_timeout=60) for _ in range(32)]
    assert command(one, ids[0], "pause").status == 200
    unknown = "0" * 32
    body = {"heartbeats": [{"id": job_id, "progress": 0.25, "worker": "w1"}
                           for job_id in ids] + [{"id": unknown}]}
    reply = call(other.url, "POST", "/v1/heartbeats", body=body)
    assert reply.status == 200, reply.text
    results = reply.json()["results"]
    assert [r["id"] for r in results] == [*ids, unknown]
    assert results[0]["state"] == "pause"
    assert all(r["found"] and r["state"] == "start" for r in results[1:-1])
    assert results[-1]["found"] is False
    job = call(one.url, "GET", f"/v1/jobs/{ids[5]}").json()
    assert (job["progress"], job["worker"]) == (0.25, "w1")
    single = call(one.url, "POST", f"/v1/jobs/{ids[0]}/heartbeat", body={"observed_state": "pause"})
    assert (single.status, single.json()["observed_state"]) == (200, "pause")


def test_bulk_commands_and_stats_over_every_master(services):
    one, other = services
    label = f"bulk-{time.monotonic_ns()}"
    ids = [register(one, labels={"bulk": label}) for _ in range(40)]
    assert len({job_id[0] for job_id in ids}) > 8
    assert command(one, ids[0], "kill").status == 200
    reply = call(other.url, "POST", "/v1/jobs/commands",
                 body={"command": "pause", "where": {"label": [f"bulk:{label}"]}})
    assert reply.status == 200, reply.text
    assert reply.json() == {"matched": 40, "changed": 39, "unchanged": 0, "refused": 1,
                            "not_found": 0, "next_cursor": None}
    reply = call(one.url, "POST", "/v1/jobs/commands",
                 body={"command": "start", "ids": [*ids[:10], "0" * 32]})
    assert reply.json()["changed"] == 9 and reply.json()["not_found"] == 1
    stats = call(other.url, "GET", "/v1/stats").json()
    assert stats["labels"][f"bulk:{label}"] == 40
    assert stats["states"]["pause"] >= 30 and stats["total"] >= 40
    assert sum(entry["count"] for entry in stats["changes_per_minute"]) >= 40 + 1 + 39 + 9


def test_workers_search_rerun_and_bulk_delete_over_every_master(services):
    """Issue 20's keys (idx:name, idx:worker, workers, workers:jobs, runtimes)
    live in each shard's slot: every script that writes them runs on the
    master of the job's shard, and the reads merge all shards."""
    one, other = services
    run = uuid.uuid4().hex[:8]
    ids = [register(one, name=f"cl-{run}-{i:02d}", heartbeat_timeout=60) for i in range(32)]
    assert len({job_id[0] for job_id in ids}) > 8
    worker = f"cl-worker-{run}"
    body = {"heartbeats": [{"id": job_id, "worker": worker, "progress": 1} for job_id in ids]}
    assert call(other.url, "POST", "/v1/heartbeats", body=body).status == 200
    for job_id in ids[:10]:
        assert command(one, job_id, "done").status == 200

    def listed(service, query: str) -> list[str]:
        reply = call(service.url, "GET", f"/v1/jobs?{query}&limit=100")
        assert reply.status == 200, reply.text
        return [job["id"] for job in reply.json()["jobs"]]

    assert listed(other, f"worker={worker}") == list(reversed(ids))
    assert listed(one, f"name_prefix=cl-{run}-0") == list(reversed(ids[:10]))
    assert listed(other, f"name_prefix=cl-{run}-&state=done") == list(reversed(ids[:10]))
    workers = {w["name"]: w for w in call(one.url, "GET", "/v1/workers?limit=500")
               .json()["workers"]}
    assert workers[worker]["jobs"]["running"] == 22 and workers[worker]["jobs"]["done"] == 10

    rerun = call(other.url, "POST", f"/v1/jobs/{ids[0]}/rerun")
    assert rerun.status == 201, rerun.text
    assert rerun.json()["retry_of"] == ids[0] and rerun.json()["id"][0] == ids[0][0]
    assert call(one.url, "GET", f"/v1/jobs/{ids[0]}").json()["reruns"] == [rerun.json()["id"]]
    assert call(one.url, "GET", "/v1/stats").json()["run_times"]["teams"]["count"] >= 10

    reply = call(one.url, "POST", "/v1/jobs/commands",
                 body={"command": "delete", "ids": ids[:12]})
    assert reply.status == 200, reply.text
    assert (reply.json()["deleted"], reply.json()["refused_ids"]) == (10, ids[10:12])
    # Left of the first ten: the rerun, which has the first one's name.
    assert listed(other, f"name_prefix=cl-{run}-0") == [rerun.json()["id"]]
    assert listed(one, f"worker={worker}") == list(reversed(ids[10:]))


def test_every_service_listens_on_every_shard_channel(cluster, services):
    """Sharded pub/sub: each service subscribes to the 16 shard channels, on
    whichever master owns each, from its first long-poll on."""
    job_id = register(services[0])
    for service in services:
        assert call(service.url, "GET", f"/v1/jobs/{job_id}?wait=0").status == 200
    client = cluster.client()
    try:
        deadline = time.monotonic() + 10
        while True:
            counts = {}
            for shard in KeySchema().shards.values():
                node = client.nodes_manager.get_node_from_slot(key_slot(shard.channel.encode()))
                reply = client.pubsub_shardnumsub(shard.channel, target_nodes=node)
                counts[shard.shard] = dict(reply)[shard.channel]
            if all(count >= len(services) for count in counts.values()) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        client.close()
    assert counts == dict.fromkeys(SHARDS, len(services))


def test_a_command_on_one_service_wakes_a_long_poll_on_the_other(services):
    one, other = services
    job_ids = [register(one) for _ in range(6)]  # several shards, so several nodes
    latencies = []
    with ThreadPoolExecutor(len(job_ids)) as pool:
        waiting = [pool.submit(call, other.url, "GET", f"/v1/jobs/{job_id}?wait=20&version=1")
                   for job_id in job_ids]
        long_polls_waiting(other.url, len(job_ids))
        for job_id, future in zip(job_ids, waiting, strict=True):
            sent = time.monotonic()
            assert command(one, job_id, "pause").status == 200
            reply = future.result()
            latencies.append(time.monotonic() - sent)
            assert reply.status == 200, reply.text
            assert (reply.json()["state"], reply.json()["version"]) == ("pause", 2)
    # Woken by the change message of each job's shard (on its own master), not
    # by the re-read every second that only covers lost messages.
    latencies.sort()
    print("long-poll woken across services in "
          + ", ".join(f"{latency * 1000:.0f}" for latency in latencies) + " ms")
    assert latencies[len(latencies) // 2] < POLL_INTERVAL / 2


def test_delete_across_services(services):
    one, other = services
    job_id = register(one, labels={"gone": "soon"})
    assert call(other.url, "DELETE", f"/v1/jobs/{job_id}").status == 409
    assert command(other, job_id, "done").status == 200
    assert call(other.url, "DELETE", f"/v1/jobs/{job_id}").status == 204
    assert call(one.url, "GET", f"/v1/jobs/{job_id}").status == 404
    assert call(one.url, "GET", f"/v1/jobs/{job_id}/history").status == 404
    listed = call(one.url, "GET", "/v1/jobs?label=gone:soon").json()["jobs"]
    assert job_id not in {job["id"] for job in listed}


def test_ready_and_metrics_on_the_cluster(services):
    register(services[0])
    for service in services:
        assert call(service.url, "GET", "/readyz").status == 200
        metrics = call(service.url, "GET", "/metrics")
        assert metrics.status == 200
        started = [line for line in metrics.text.splitlines()
                   if line.startswith('karmchari_jobs{state="start"}')]
        assert started and float(started[0].split()[-1]) >= 1, metrics.text


def test_scripts_flushed_on_every_master_are_reloaded(cluster, services):
    one, other = services
    job_ids = [register(one, heartbeat_timeout=30) for _ in range(6)]
    for node in cluster.nodes:
        node.client().script_flush()
    assert call(other.url, "GET", "/readyz").status == 200  # loads them again
    for node in cluster.nodes:
        node.client().script_flush()
    assert command(other, job_ids[0], "pause").status == 200
    reply = call(one.url, "POST", "/v1/heartbeats",
                 body={"heartbeats": [{"id": job_id} for job_id in job_ids]})
    assert reply.status == 200, reply.text
    assert [r["state"] for r in reply.json()["results"]] == ["pause"] + ["start"] * 5
    assert call(other.url, "POST", "/registerJob", form={"type": "teams"}).status == 200
    assert call(one.url, "GET", f"/v1/jobs/{job_ids[1]}").status == 200


def test_retention_sweep_deletes_finished_jobs_on_every_master(cluster):
    service = ServiceProcess("--redis-url", cluster.url(2), "--redis-cluster",
                             "--retention-seconds", "1",
                             env={"KARMCHARI_SWEEP_INTERVAL": "0.2",
                                  "KARMCHARI_KEY_PREFIX": "sweep"})
    client = cluster.client()

    def keys() -> set[str]:
        return set(client.scan_iter(match="{sweep:*", target_nodes="all"))

    try:
        service.start()
        job_ids = [register(service) for _ in range(12)]
        assert len(keys()) > 2 * len(job_ids)
        for job_id in job_ids:
            assert command(service, job_id, "done").status == 200
        deadline = time.monotonic() + 20
        while any(call(service.url, "GET", f"/v1/jobs/{job_id}").status == 200
                  for job_id in job_ids):
            assert time.monotonic() < deadline, "finished jobs were not swept"
            time.sleep(0.2)
        # All gone but the per-minute counters (changes, run times), which expire
        # by themselves.
        assert {key for key in keys()
                if not key.endswith((":changes", ":runtimes", ":migrations"))} == set()
    finally:
        client.close()
        service.stop()
        service.log_path.unlink(missing_ok=True)


def test_import_legacy_from_and_into_the_cluster(cluster, services):
    """The Go service's keys in the cluster itself (SCAN on every master), imported
    into it through the serve options, then deleted from it."""
    client = cluster.client()
    ids = [uuid.uuid4().hex for _ in range(40)]
    try:
        for job_id in ids:
            client.execute_command("HSET", f"job:{job_id}", "type", "teams", "state", "start")
        client.execute_command("HSET", f"job:{ids[0]}", "state", "pause")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
        done = subprocess.run([*karmchari_command(), "import-legacy", "--redis-url",
                               cluster.url(1), "--redis-cluster", "--delete-source",
                               "--batch", "16", "--output", "json"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["imported"], report["deleted"]) == (40, 40)
        assert not any(client.exists(f"job:{job_id}") for job_id in ids)
    finally:
        client.close()
    reply = call(services[0].url, "GET", f"/jobState?id={ids[0]}")
    assert (reply.status, reply.text) == (200, f"{ids[0]} -- pause")
    reply = call(services[1].url, "GET", f"/jobState?id={ids[1]}")
    assert (reply.status, reply.text) == (200, f"{ids[1]} -- start")
