"""Listing through the store: newest first over 16 shards, cursor pages with
no duplicates and no gaps, and every filter alone and combined."""

from __future__ import annotations

import base64
import time

import pytest

from app.model import Job
from app.store import JobFilter, JobStore, listing
from tests.bulk_load import register_many

TYPES = ("upload", "export", "teams")


def register_mix(store: JobStore, count: int = 30) -> list[Job]:
    """Jobs of every type, some labelled, some paused or ended; oldest first."""
    jobs = []
    for i in range(count):
        labels = {}
        if i % 2 == 0:
            labels["team"] = "core"
        if i % 3 == 0:
            labels["env"] = "prod"
        job, _ = store.register(TYPES[i % 3], labels=labels)
        if i % 5 == 1:
            job, _ = store.apply_command(job.id, "pause")
        elif i % 5 == 2:
            job, _ = store.apply_command(job.id, "done")
        jobs.append(job)
    return jobs


def all_pages(store: JobStore, where: JobFilter, limit: int, **options) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = store.list_jobs(where, limit=limit, cursor=cursor, **options)
        pages.append([job.id for job in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            return pages


def newest_first(jobs: list[Job], keep=lambda job: True) -> list[str]:
    return [job.id for job in reversed(jobs) if keep(job)]


@pytest.fixture
def jobs(store):
    return register_mix(store)


def test_newest_first_over_every_shard(store, jobs):
    page = store.list_jobs(JobFilter(), limit=100)
    assert [job.id for job in page.jobs] == newest_first(jobs)
    assert page.next_cursor is None
    assert len({job.id[0] for job in jobs}) > 1


@pytest.mark.parametrize("limit", [1, 4, 7, 29, 30])
def test_pages_have_no_duplicates_and_no_gaps(store, jobs, limit):
    pages = all_pages(store, JobFilter(), limit)
    assert all(len(page) == limit for page in pages[:-1])
    assert [job_id for page in pages for job_id in page] == newest_first(jobs)


def test_changes_between_pages_cause_no_duplicates_and_no_gaps(store, jobs):
    first = store.list_jobs(JobFilter(), limit=10)
    newer, _ = store.register("teams")
    deleted = jobs[7]  # a done job, on a later page
    store.delete(deleted.id)

    seen = [job.id for job in first.jobs]
    cursor = first.next_cursor
    while cursor:
        page = store.list_jobs(JobFilter(), limit=10, cursor=cursor)
        seen += [job.id for job in page.jobs]
        cursor = page.next_cursor

    assert seen == [job_id for job_id in newest_first(jobs) if job_id != deleted.id]
    assert store.list_jobs(JobFilter(), limit=1).jobs[0].id == newer.id


def matches(job: Job, state=None, job_type=None, labels=()) -> bool:
    return ((state is None or job.state == state) and (job_type is None or job.type == job_type)
            and all(job.labels.get(k) == v for k, v in labels))


@pytest.mark.parametrize("where", [
    JobFilter(state="pause"),
    JobFilter(state="done"),
    JobFilter(state="kill"),
    JobFilter(type="export"),
    JobFilter(labels=(("team", "core"),)),
    JobFilter(labels=(("team", "other"),)),
    JobFilter(state="start", type="teams"),
    JobFilter(type="upload", labels=(("env", "prod"),)),
    JobFilter(state="done", labels=(("team", "core"),)),
    JobFilter(labels=(("team", "core"), ("env", "prod"))),
    JobFilter(state="start", type="upload", labels=(("team", "core"), ("env", "prod"))),
    JobFilter(stalled=False),
    JobFilter(stalled=False, type="export", state="pause"),
], ids=repr)
def test_filters_alone_and_combined(store, jobs, where):
    expected = newest_first(jobs, lambda j: matches(j, where.state, where.type, where.labels))
    assert [job_id for page in all_pages(store, where, 3) for job_id in page] == expected
    assert [job.id for job in store.list_jobs(where, limit=100).jobs] == expected


def test_a_bounded_scan_gives_short_pages_that_still_lead_to_every_match(store, jobs):
    where = JobFilter(state="done", type="teams")
    expected = newest_first(jobs, lambda j: matches(j, "done", "teams"))
    assert expected
    pages = all_pages(store, where, 5, max_scan=2)
    assert len(pages) > 2
    assert [job_id for page in pages for job_id in page] == expected


def test_stalled_filter(store):
    quick = [store.register(TYPES[i % 3], labels={"team": "core" if i % 2 else "web"},
                            heartbeat_timeout=1)[0] for i in range(6)]
    paused, _ = store.apply_command(quick[0].id, "pause")
    store.apply_command(quick[1].id, "fail")
    patient, _ = store.register("teams", heartbeat_timeout=3600)
    store.register("teams")
    due_ms = max(job.created_at for job in quick) + 1000
    while store.server_time_ms() <= due_ms:
        time.sleep(0.05)

    # Stalled jobs come from the deadline index: the most recently stalled first.
    by_deadline = sorted(quick[2:], key=lambda j: (j.created_at, j.id))
    stalled = newest_first(by_deadline)
    assert [j.id for j in store.list_jobs(JobFilter(stalled=True), limit=100).jobs] == stalled
    assert [job_id for page in all_pages(store, JobFilter(stalled=True), 1)
            for job_id in page] == stalled
    assert [j.id for j in store.list_jobs(JobFilter(stalled=True, type="teams"),
                                          limit=100).jobs] == \
        newest_first(by_deadline, lambda j: j.type == "teams")
    assert [j.id for j in store.list_jobs(JobFilter(stalled=True, labels=(("team", "core"),)),
                                          limit=100).jobs] == \
        newest_first(by_deadline, lambda j: j.labels["team"] == "core")
    not_stalled = {j.id for j in store.list_jobs(JobFilter(stalled=False), limit=100).jobs}
    assert patient.id in not_stalled and paused.id in not_stalled
    assert not not_stalled & set(stalled)


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "garbage", "!!!!", "é", encode(b"abc"), encode(b"12.notanid"),
    encode(b"-5." + b"a" * 32), encode(b"5." + b"A" * 32), encode(b"1" * 20 + b"." + b"a" * 32),
    encode(b"5." + b"a" * 32 + b".6"), encode(b"\xff\xfe." + b"a" * 32),
])
def test_invalid_cursor_raises_value_error(store, cursor):
    with pytest.raises(ValueError):
        store.list_jobs(JobFilter(), cursor=cursor)


def test_a_cursor_this_store_gave_is_valid(store, jobs):
    cursor = store.list_jobs(JobFilter(), limit=2).next_cursor
    assert cursor and cursor.isascii()
    assert len(store.list_jobs(JobFilter(), limit=2, cursor=cursor).jobs) == 2


def test_a_skewed_spread_over_shards_pages_every_job_once_in_order(store, redis_client,
                                                                   monkeypatch):
    """A shard first reads about its share of a page (limit/16 and a margin),
    then only the shards that may hold more are read again: a page whose
    newest jobs all sit in one shard, and ties across the cursor's score and
    across the page's cut, still list every job exactly once, in order."""
    ids = register_many(store, "teams", 1600)
    read = []
    real = listing.entries_below_each

    def counting(client, reads, upper=None):
        answers = real(client, reads, upper)
        read.append(sum(map(len, answers)))
        return answers
    monkeypatch.setattr(listing, "entries_below_each", counting)
    assert len(store.list_jobs(JobFilter(), limit=50).jobs) == 50
    assert sum(read) <= 16 * 10 + 50     # evenly spread: about 10 a shard, not 50
    by_shard: dict[str, list[str]] = {}
    for job_id in sorted(ids):
        by_shard.setdefault(job_id[0], []).append(job_id)
    hot = max(by_shard.values(), key=len)
    rest = [job_id for job_id in sorted(ids) if job_id not in set(hot)]
    scores = {job_id: 1_000_000 - n for n, job_id in enumerate(hot[:-20])}   # the newest
    scores |= {job_id: 500_000 for job_id in hot[-20:] + rest[:100]}         # one tie
    scores |= {job_id: 1000 + n // 30 for n, job_id in enumerate(rest[100:])}  # ties of 30
    for job_id, score in scores.items():
        redis_client.zadd(store.keys.for_job(job_id).all_jobs, {job_id: score})
    expected = [job_id for _, job_id in sorted(((s, i) for i, s in scores.items()),
                                               reverse=True)]
    for limit in (1, 7, 50, 120):
        read.clear()
        pages = all_pages(store, JobFilter(), limit)
        assert [job_id for page in pages for job_id in page] == expected
        assert all(len(page) == limit for page in pages[:-1])
