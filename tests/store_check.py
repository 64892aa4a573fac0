"""What Redis must hold for a given set of live jobs: every index (see
docs/redis-keys.md) holds exactly the jobs it should, with the job's score,
the label counts count them, and no key is left of a job that is gone."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import redis

from app.model import TERMINAL_STATES, State
from app.store.keys import KeySchema


@dataclass(frozen=True)
class Indexed:
    """What a live job's index entries follow from."""

    type: str
    state: str
    labels: tuple[tuple[str, str], ...] = ()
    timed: bool = False  # heartbeat_timeout > 0: in the deadline index while in start
    heartbeated: bool = False  # has had a heartbeat: no longer waiting for a worker


def expected_indexes(keys: KeySchema, jobs: dict[str, Indexed]) -> dict[str, set[str]]:
    expected: dict[str, set[str]] = defaultdict(set)
    for job_id, job in jobs.items():
        shard = keys.for_job(job_id)
        for index in (shard.all_jobs, shard.state_index(job.state), shard.type_index(job.type),
                      *(shard.label_index(k, v) for k, v in job.labels)):
            expected[index].add(job_id)
        if job.state == State.START.value and job.timed:
            expected[shard.deadlines].add(job_id)
        if job.state == State.START.value and not job.heartbeated:
            expected[shard.waiting].add(job_id)
            if job.timed:
                expected[shard.waiting_deadlines].add(job_id)
        if job.state in TERMINAL_STATES:
            expected[shard.expiries].add(job_id)
    return dict(expected)


def assert_store_holds(client: redis.Redis, keys: KeySchema, jobs: dict[str, Indexed]) -> None:
    """Every sorted set of the namespace is an index holding exactly the jobs
    ``jobs`` says; the listing indexes score each job with its ``score``;
    job hashes and histories exist for these jobs and no others."""
    pattern = f"{{{keys.prefix}:*"
    all_zsets = set(client.scan_iter(match=pattern, count=1000, _type="zset"))
    # The lexical indexes hold text, not ids: checked against the hashes below.
    lexical = {key for key in all_zsets if key.endswith((":idx:name", ":idx:worker"))}
    zsets = sorted(key for key in all_zsets - lexical
                   if ":idx:" in key or key.endswith((":deadline", ":expiry", ":deadline:waiting")))
    counted = sorted(key for key in all_zsets if key.endswith(":labels"))
    hashes = set(client.scan_iter(match=pattern + ":job:*", count=1000, _type="hash"))
    lists = set(client.scan_iter(match=pattern + ":hist:*", count=1000, _type="list"))
    pipe = client.pipeline(transaction=False)
    for key in zsets + counted:
        pipe.zrange(key, 0, -1, withscores=True)
    ids = sorted(jobs)
    for job_id in ids:
        pipe.hget(keys.for_job(job_id).job(job_id), "score")
    replies = pipe.execute()
    actual = {key: dict(entries) for key, entries in zip(zsets, replies, strict=False)}
    label_counts = {key: {label: int(n) for label, n in entries}
                    for key, entries in zip(counted, replies[len(zsets):], strict=False)}
    scores = {job_id: int(score)
              for job_id, score in zip(ids, replies[len(zsets) + len(counted):], strict=True)
              if score is not None}

    assert hashes == {keys.for_job(j).job(j) for j in ids}, "job hashes"
    assert lists <= {keys.for_job(j).history(j) for j in ids}, "histories of gone jobs"
    expected = expected_indexes(keys, jobs)
    assert {k: set(v) for k, v in actual.items()} == expected
    timed = {key for j in ids for key in (keys.for_job(j).deadlines, keys.for_job(j).expiries,
                                          keys.for_job(j).waiting_deadlines)}
    for key, entries in actual.items():
        if key not in timed:
            assert entries == {j: scores[j] for j in entries}, f"scores of {key}"
    for key, entries in actual.items():
        if key.endswith(":deadline:waiting"):
            deadlines = actual[key.removesuffix(":waiting")]
            assert entries == {j: deadlines[j] for j in entries}, f"deadlines of {key}"
    expected_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job_id, job in jobs.items():
        for k, v in job.labels:
            expected_counts[keys.for_job(job_id).label_counts][f"{k}:{v}"] += 1
    assert label_counts == {key: dict(c) for key, c in expected_counts.items()}, "label counts"
    assert_lexical_indexes(client, keys, ids)


def assert_lexical_indexes(client: redis.Redis, keys: KeySchema, ids: list[str]) -> None:
    """idx:name and idx:worker hold "<text>\\0<score, 20 digits><id>" for each
    live job with a name, a worker; workers:jobs counts each worker's jobs by state."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.for_job(job_id).job(job_id), "name", "worker", "score", "state")
    expected: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job_id, (name, worker, score, state) in zip(ids, pipe.execute(), strict=True):
        shard = keys.for_job(job_id)
        if name:
            expected[shard.name_index].add(f"{name}\0{int(score):020d}{job_id}")
        if worker:
            expected[shard.worker_index].add(f"{worker}\0{int(score):020d}{job_id}")
            counts[shard.worker_jobs][f"{state} {worker}"] += 1
    shards = list(keys.shards.values())
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.zrange(shard.name_index, 0, -1)
        pipe.zrange(shard.worker_index, 0, -1)
        pipe.hgetall(shard.worker_jobs)
    replies = iter(pipe.execute())
    for shard in shards:
        assert set(next(replies)) == expected[shard.name_index], "name index"
        assert set(next(replies)) == expected[shard.worker_index], "worker index"
        assert {f: int(n) for f, n in next(replies).items()} == dict(counts[shard.worker_jobs]), \
            "jobs per worker"


def indexed_from_hashes(client: redis.Redis, keys: KeySchema) -> dict[str, Indexed]:
    """The live jobs as their hashes describe them (for runs without a model)."""
    found = {}
    for key in client.scan_iter(match=f"{{{keys.prefix}:*:job:*", count=1000, _type="hash"):
        h = client.hgetall(key)
        found[h["id"]] = Indexed(h["type"], h["state"],
                                 tuple(sorted(json.loads(h["labels"]).items())),
                                 int(h["heartbeat_timeout"]) > 0, "heartbeat_at" in h)
    return found
