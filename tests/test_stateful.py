"""A Hypothesis state machine drives the whole app (old endpoints and JSON
API v1, through Falcon's TestClient on a real Redis) and checks every answer
against a plain-Python model of SPEC §2; after every step, Redis must hold
exactly what the model says, every index included (tests/store_check.py).

The app runs with a history cap of 3 and a retention of 0 s (finished jobs
are due for the sweep at once); a second store with a long retention finishes
some jobs that the sweep must keep. A threaded test then interleaves the
scripts on shared jobs and checks the same invariant.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field

import pytest
from falcon import testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from app.app import create_app
from app.config import Config
from app.errors import KarmchariError
from app.store import HeartbeatReport, JobFilter, JobStore
from tests.spec_table import COMMANDS, STATES, TARGET, TERMINAL, outcome
from tests.store_check import Indexed, assert_store_holds, indexed_from_hashes

TYPES = ("upload", "export", "teams")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HISTORY_CAP = 3
LABEL_KEYS, LABEL_VALUES = ["team", "env"], "xyz"

unknown_ids = st.one_of(
    st.text("0123456789abcdef", min_size=32, max_size=32),  # well formed, never registered
    st.sampled_from(["abc", "0" * 31, "0" * 33, "A" * 32, "g" * 32]),
)
invalid_commands = st.sampled_from(["explode", "PAUSE", "failed", "pause ", "resume"])
reasons = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


def old_name(state: str) -> str:
    """The old endpoints name the state that fail leads to as the old service did."""
    return "fail" if state == "failed" else state


def acknowledged(state: str, observed: str, reported: str | None) -> str:
    """The observed_state a heartbeat leaves (recordHeartbeats-6.lua)."""
    if reported is None:
        return observed
    if state in ("start", "pause") or (state == "kill" and reported == "kill"):
        return reported
    return observed


@dataclass
class ModelJob:
    type: str
    labels: dict[str, str] = field(default_factory=dict)
    timed: bool = False
    state: str = "start"
    observed: str = ""
    heartbeated: bool = False  # a heartbeat was recorded (in state start or pause)
    due: bool = False  # finished with a retention that has run out
    # (command, from, to, reason) of every accepted change, registration first.
    changes: list[tuple[str, str, str, str]] = field(
        default_factory=lambda: [("register", "", "start", "")])

    @property
    def version(self) -> int:
        return len(self.changes)

    def indexed(self) -> Indexed:
        return Indexed(self.type, self.state, tuple(sorted(self.labels.items())), self.timed,
                       self.heartbeated)


class JobApiMachine(RuleBasedStateMachine):
    """``client``, ``store`` (retention 0 s) and ``long_store`` (retention one
    hour) are set by the test that runs the machine."""

    client = None
    store = None
    long_store = None
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        # Each run starts from an empty namespace (this test's own), so the
        # invariant can ask for exactly the model's keys.
        client = self.store.client
        stale = list(client.scan_iter(match=f"{{{self.store.keys.prefix}:*", count=1000))
        if stale:
            client.delete(*stale)
        self.model: dict[str, ModelJob] = {}
        self.deleted: set[str] = set()
        # Idempotency records outlive one run of the machine: keys of this run only.
        self.run = uuid.uuid4().hex
        self.idempotent: dict[str, tuple[str, str]] = {}  # key -> (type, job id)

    # -- helpers -------------------------------------------------------------

    def post_form(self, path: str, form: dict[str, str]):
        return self.client.simulate_post(path, body=urllib.parse.urlencode(form), headers=FORM)

    def assert_problem(self, response, status: int, code: str) -> dict:
        assert response.status_code == status, (response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json["code"] == code, response.json
        return response.json

    def assert_job_body(self, body: dict, job_id: str) -> None:
        job = self.model[job_id]
        assert (body["id"], body["type"], body["state"], body["version"]) == \
            (job_id, job.type, job.state, job.version)

    def known(self, job_id: str) -> bool:
        return job_id not in self.deleted

    def live(self) -> dict[str, ModelJob]:
        return {j: job for j, job in self.model.items() if j not in self.deleted}

    def apply(self, job_id: str, command: str, reason: str, due: bool = True) -> str:
        job = self.model[job_id]
        result = outcome(job.state, command)
        if result == "changed":
            job.changes.append((command, job.state, TARGET[command], reason))
            job.state = TARGET[command]
            job.due = due and job.state in TERMINAL
        return result

    # -- registering ---------------------------------------------------------

    @rule(target=jobs, job_type=st.sampled_from(TYPES))
    def register_old(self, job_type):
        response = self.post_form("/registerJob", {"type": job_type})
        assert response.status_code == 200
        prefix = "Created! id = "
        assert response.text.startswith(prefix)
        job_id = response.text[len(prefix):]
        assert job_id not in self.model
        self.model[job_id] = ModelJob(job_type)
        return job_id

    @rule(target=jobs, job_type=st.sampled_from(TYPES),
          name=st.text("abcdefgh -", max_size=10),
          labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES),
                                 max_size=2),
          timeout=st.sampled_from([0, 3600]))
    def register_v1(self, job_type, name, labels, timeout):
        response = self.client.simulate_post(
            "/v1/jobs", json={"type": job_type, "name": name, "labels": labels,
                              "heartbeat_timeout": timeout})
        assert response.status_code == 201, response.text
        body = response.json
        assert body["id"] not in self.model
        assert response.headers["location"] == f"/v1/jobs/{body['id']}"
        assert (body["name"], body["labels"]) == (name, labels)
        self.model[body["id"]] = ModelJob(job_type, labels, timeout > 0)
        self.assert_job_body(body, body["id"])
        return body["id"]

    @rule(target=jobs, key=st.sampled_from("ab"), job_type=st.sampled_from(TYPES))
    def register_with_idempotency_key(self, key, job_type):
        key = f"{self.run}-{key}"
        response = self.client.simulate_post("/v1/jobs", json={"type": job_type},
                                             headers={"Idempotency-Key": key})
        if key not in self.idempotent:
            assert response.status_code == 201, response.text
            job_id = response.json["id"]
            self.idempotent[key] = (job_type, job_id)
            self.model[job_id] = ModelJob(job_type)
            self.assert_job_body(response.json, job_id)
            return job_id
        first_type, job_id = self.idempotent[key]
        if first_type != job_type:
            self.assert_problem(response, 422, "idempotency_key_reused")
        elif not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
        else:
            assert response.status_code == 200, response.text
            self.assert_job_body(response.json, job_id)
        return multiple()

    @rule(target=jobs, job_id=jobs)
    def rerun(self, job_id):
        """A new job like an ended one (POST /v1/jobs/{id}/rerun)."""
        response = self.client.simulate_post(f"/v1/jobs/{job_id}/rerun")
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return multiple()
        old = self.model[job_id]
        if old.state not in TERMINAL:
            self.assert_problem(response, 409, "not_ended")
            return multiple()
        assert response.status_code == 201, response.text
        body = response.json
        assert (body["retry_of"], body["labels"]) == (job_id, old.labels)
        self.model[body["id"]] = ModelJob(
            old.type, dict(old.labels), old.timed,
            changes=[("rerun", "", "start", f"rerun of {job_id}")])
        self.assert_job_body(body, body["id"])
        return body["id"]

    @rule(job_type=st.sampled_from(["", "nope", "Teams"]), old=st.booleans())
    def register_invalid_type(self, job_type, old):
        if old:
            response = self.post_form("/registerJob", {"type": job_type})
            expected = "Type is required" if job_type == "" else "Type is invalid"
            assert (response.status_code, response.text) == (400, expected)
        else:
            response = self.client.simulate_post("/v1/jobs", json={"type": job_type})
            assert response.status_code == 400, response.text

    # -- commands ------------------------------------------------------------

    @rule(job_id=jobs, command=st.sampled_from(COMMANDS))
    def command_old(self, job_id, command):
        response = self.post_form("/jobState", {"id": job_id, "command": command})
        if not self.known(job_id):
            assert (response.status_code, response.text) == (404, "Job not available")
            return
        state = self.model[job_id].state
        if self.apply(job_id, command, "") == "refused":
            assert (response.status_code, response.text) == \
                (409, f"Command refused: {job_id} -- {old_name(state)}")
        else:
            assert (response.status_code, response.text) == (200, f"{job_id} -- {command}")

    @rule(job_id=jobs, command=st.sampled_from(COMMANDS), reason=reasons,
          if_match=st.sampled_from([None, "current", "stale"]))
    def command_v1(self, job_id, command, reason, if_match):
        headers = {}
        if if_match is not None and self.known(job_id):
            version = self.model[job_id].version - (if_match == "stale")
            headers["If-Match"] = f'"{version}"'
        response = self.client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                             json={"command": command, "reason": reason},
                                             headers=headers)
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return
        job = self.model[job_id]
        if if_match == "stale":
            problem = self.assert_problem(response, 412, "version_mismatch")
            assert (problem["current_state"], problem["version"]) == (job.state, job.version)
            return
        state = job.state
        result = self.apply(job_id, command, reason)
        if result == "refused":
            problem = self.assert_problem(response, 409, "illegal_transition")
            assert (problem["current_state"], problem["version"]) == (state, job.version)
            return
        assert response.status_code == 200, response.text
        assert response.json["changed"] == (result == "changed")
        self.assert_job_body(response.json["job"], job_id)
        assert response.headers["etag"] == f'"{job.version}"'

    @rule(job_id=unknown_ids, command=st.sampled_from(COMMANDS), old=st.booleans())
    def command_unknown_id(self, job_id, command, old):
        if old:
            response = self.post_form("/jobState", {"id": job_id, "command": command})
            assert (response.status_code, response.text) == (404, "Job not available")
        else:
            response = self.client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                                 json={"command": command})
            self.assert_problem(response, 404, "job_not_found")

    @rule(job_id=jobs, command=invalid_commands, old=st.booleans())
    def command_invalid(self, job_id, command, old):
        if old:
            response = self.post_form("/jobState", {"id": job_id, "command": command})
            assert (response.status_code, response.text) == (400, "Command is invalid")
        else:
            response = self.client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                                 json={"command": command})
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == "application/problem+json"

    # -- reads ---------------------------------------------------------------

    @rule(job_id=jobs)
    def read_old(self, job_id):
        response = self.client.simulate_get("/jobState", params={"id": job_id})
        if not self.known(job_id):
            assert (response.status_code, response.text) == (404, "Job not available")
        else:
            assert (response.status_code, response.text) == \
                (200, f"{job_id} -- {old_name(self.model[job_id].state)}")

    @rule(job_id=jobs)
    def read_v1(self, job_id):
        response = self.client.simulate_get(f"/v1/jobs/{job_id}")
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return
        assert response.status_code == 200
        self.assert_job_body(response.json, job_id)
        assert response.headers["etag"] == f'"{self.model[job_id].version}"'

    @rule(job_id=unknown_ids, old=st.booleans())
    def read_unknown_id(self, job_id, old):
        if old:
            response = self.client.simulate_get("/jobState", params={"id": job_id})
            assert (response.status_code, response.text) == (404, "Job not available")
        else:
            self.assert_problem(self.client.simulate_get(f"/v1/jobs/{job_id}"), 404,
                                "job_not_found")

    @rule(job_id=jobs)
    def read_history(self, job_id):
        response = self.client.simulate_get(f"/v1/jobs/{job_id}/history")
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return
        assert response.status_code == 200
        entries = response.json["entries"]
        kept = list(enumerate(self.model[job_id].changes, start=1))[-HISTORY_CAP:]
        assert [(e["version"], e["command"], e["from"], e["to"], e["reason"]) for e in entries] \
            == [(version, *change) for version, change in kept]

    # -- heartbeats and deleting -----------------------------------------------

    @rule(job_id=jobs, progress=st.integers(0, 100),
          observed=st.one_of(st.none(), st.sampled_from(STATES)))
    def heartbeat(self, job_id, progress, observed):
        """observed_state: a worker's acknowledgement of the state it is in."""
        body = {"progress": progress} if observed is None else \
            {"progress": progress, "observed_state": observed}
        response = self.client.simulate_post(f"/v1/jobs/{job_id}/heartbeat", json=body)
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return
        job = self.model[job_id]
        job.observed = acknowledged(job.state, job.observed, observed)
        job.heartbeated = job.heartbeated or job.state in ("start", "pause")
        assert response.status_code == 200, response.text
        assert (response.json["state"], response.json["version"],
                response.json["observed_state"]) == (job.state, job.version, job.observed)

    @rule(job_ids=st.lists(st.one_of(jobs, unknown_ids.filter(lambda i: len(i) == 32)),
                           min_size=1, max_size=5),
          observed=st.one_of(st.none(), st.sampled_from(STATES)))
    def heartbeat_batch(self, job_ids, observed):
        job_ids = list(dict.fromkeys(job_ids))
        if any(not all(c in "0123456789abcdef" for c in j) for j in job_ids):
            return
        extra = {} if observed is None else {"observed_state": observed}
        response = self.client.simulate_post(
            "/v1/heartbeats", json={"heartbeats": [{"id": j, **extra} for j in job_ids]})
        assert response.status_code == 200, response.text
        results = response.json["results"]
        assert [r["id"] for r in results] == job_ids
        for job_id, result in zip(job_ids, results, strict=True):
            if job_id not in self.model or not self.known(job_id):
                assert result == {"id": job_id, "found": False}
                continue
            job = self.model[job_id]
            job.observed = acknowledged(job.state, job.observed, observed)
            job.heartbeated = job.heartbeated or job.state in ("start", "pause")
            assert (result["found"], result["state"], result["version"],
                    result["observed_state"]) == (True, job.state, job.version, job.observed)

    @rule(job_id=jobs, command=st.sampled_from(["kill", "done", "fail"]))
    def finish_with_a_long_retention(self, job_id, command):
        """Through the store of another process, whose retention is an hour:
        the sweep must keep this job."""
        try:
            _, changed = self.long_store.apply_command(job_id, command)
        except KarmchariError as error:
            expected = "job_not_found" if not self.known(job_id) else "illegal_transition"
            assert error.code == expected
            if self.known(job_id):
                assert self.apply(job_id, command, "", due=False) == "refused"
            return
        assert self.known(job_id)
        assert changed == (self.apply(job_id, command, "", due=False) == "changed")

    @rule()
    def waiting_for_a_worker(self):
        """The overview's count of jobs waiting for a worker and the listing
        its link shows are the model's jobs in start with no heartbeat (none
        stall here: timeouts are 0 or an hour)."""
        waiting = {j for j, job in self.live().items()
                   if job.state == "start" and not job.heartbeated}
        stats = self.client.simulate_get("/v1/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json["waiting"] == len(waiting)
        listed = self.client.simulate_get(
            "/v1/jobs", params={"state": "start", "started": "false", "stalled": "false",
                                "limit": "500"})
        assert listed.status_code == 200, listed.text
        assert {j["id"] for j in listed.json["jobs"]} == waiting

    @rule()
    def sweep(self):
        """The retention sweep, as the service's sweeper thread runs it."""
        for _ in range(50):
            if not self.store.sweep_expired(job_types=TYPES):
                break
        else:
            raise AssertionError("the sweep does not end")
        self.deleted |= {j for j, job in self.live().items() if job.due}

    @rule(state=st.one_of(st.none(), st.sampled_from(STATES)),
          job_type=st.one_of(st.none(), st.sampled_from(TYPES)),
          label=st.one_of(st.none(), st.tuples(st.sampled_from(LABEL_KEYS),
                                               st.sampled_from(LABEL_VALUES))),
          limit=st.integers(1, 4))
    def list_all_pages(self, state, job_type, label, limit):
        """Pages followed by their cursors, put together, are exactly the
        matching jobs, newest first, each once."""
        params = {"limit": str(limit)}
        if state:
            params["state"] = state
        if job_type:
            params["type"] = job_type
        if label:
            params["label"] = f"{label[0]}:{label[1]}"
        listed: list[str] = []
        for _ in range(200):
            response = self.client.simulate_get("/v1/jobs", params=params)
            assert response.status_code == 200, response.text
            for body in response.json["jobs"]:
                self.assert_job_body(body, body["id"])
                listed.append(body["id"])
            cursor = response.json["next_cursor"]
            if cursor is None:
                break
            params["cursor"] = cursor
        else:
            raise AssertionError("the cursors do not end")
        matching = [j for j, job in self.live().items()
                    if (state is None or job.state == state)
                    and (job_type is None or job.type == job_type)
                    and (label is None or job.labels.get(label[0]) == label[1])]
        scores = self.scores(matching)
        assert listed == sorted(matching, key=lambda j: (scores[j], j), reverse=True)

    @rule(job_id=jobs)
    def delete(self, job_id):
        response = self.client.simulate_delete(f"/v1/jobs/{job_id}")
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
        elif self.model[job_id].state in TERMINAL:
            assert response.status_code == 204, response.text
            self.deleted.add(job_id)
        else:
            problem = self.assert_problem(response, 409, "illegal_transition")
            assert problem["current_state"] == self.model[job_id].state

    # -- invariants ------------------------------------------------------------

    def scores(self, job_ids: list[str]) -> dict[str, int]:
        pipe = self.store.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.store.keys.for_job(job_id).job(job_id), "score")
        return {j: int(s) for j, s in zip(job_ids, pipe.execute(), strict=True)}

    # -- invariants ------------------------------------------------------------

    @invariant()
    def redis_holds_the_model(self):
        """Every job's state, version, acknowledgement and history (capped) in
        Redis are the model's; deleted jobs left no hash and no history behind;
        every index holds exactly the jobs the model says."""
        ids = sorted(self.model)
        pipe = self.store.client.pipeline(transaction=False)
        for job_id in ids:
            shard = self.store.keys.for_job(job_id)
            pipe.hmget(shard.job(job_id), "state", "version", "observed_state", "labels")
            pipe.llen(shard.history(job_id))
        replies = pipe.execute()
        for job_id, fields, length in zip(ids, replies[::2], replies[1::2], strict=True):
            if job_id in self.deleted:
                assert (fields, length) == ([None] * 4, 0)
                continue
            job = self.model[job_id]
            state, version, observed, labels = fields
            assert (state, int(version), observed or "", json.loads(labels), length) == \
                (job.state, job.version, job.observed, job.labels,
                 min(job.version, HISTORY_CAP))
        assert_store_holds(self.store.client, self.store.keys,
                           {j: job.indexed() for j, job in self.live().items()})


@pytest.fixture
def small_service(redis_url, key_prefix, store):
    """The app with a history cap of 3 and finished jobs due for the sweep at
    once, and a store that finishes jobs with a retention of an hour."""
    config = Config(redis_url=redis_url, key_prefix=key_prefix, threads=8,
                    history_cap=HISTORY_CAP)
    swept = JobStore(store.client, history_cap=HISTORY_CAP, retention_seconds=0,
                     keys=store.keys)
    kept = JobStore(store.client, history_cap=HISTORY_CAP, retention_seconds=3600,
                    keys=store.keys)
    return testing.TestClient(create_app(config, swept)), swept, kept


def test_the_api_agrees_with_the_model(small_service):
    client, swept, kept = small_service
    machine = type("Machine", (JobApiMachine,),
                   {"client": client, "store": swept, "long_store": kept})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=50, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# -- many threads on shared jobs -------------------------------------------------


def _one_thread(store: JobStore, job_ids: list[str], lock: threading.Lock, seed: int,
                steps: int) -> None:
    rng = random.Random(seed)
    for _ in range(steps):
        with lock:
            job_id = rng.choice(job_ids)
        choice = rng.random()
        try:
            if choice < 0.35:
                store.apply_command(job_id, rng.choice(COMMANDS), reason="t")
            elif choice < 0.45:
                with lock:
                    some = rng.sample(job_ids, min(5, len(job_ids)))
                if rng.random() < 0.5:
                    store.bulk_command(rng.choice(COMMANDS), ids=some, reason="bulk")
                else:
                    store.bulk_command(rng.choice(COMMANDS), reason="bulk", where=JobFilter(
                        state=rng.choice(STATES), labels=(("team", rng.choice("xyz")),)))
            elif choice < 0.7:
                with lock:
                    batch = rng.sample(job_ids, min(4, len(job_ids)))
                store.heartbeats([HeartbeatReport(j, progress=rng.random(),
                                                  observed_state=rng.choice(STATES))
                                  for j in batch])
            elif choice < 0.8:
                store.delete(job_id)
            elif choice < 0.9:
                store.sweep_expired(job_types=TYPES)
            else:
                labels = {rng.choice(LABEL_KEYS): rng.choice(LABEL_VALUES)}
                job, _ = store.register(rng.choice(TYPES), labels=labels,
                                        heartbeat_timeout=rng.choice([0, 3600]))
                with lock:
                    job_ids.append(job.id)
        except KarmchariError:
            pass  # refused (a terminal state, a job deleted meanwhile): nothing written


def test_interleaved_scripts_keep_every_index_exact(store):
    """Threads apply commands (one job, or many: applyCommands by ids and by
    filter), heartbeat batches, deletes, sweeps and registrations to shared jobs
    at once; afterwards every index holds exactly
    what the jobs' hashes say, and each history is the tail of its job's changes."""
    swept = JobStore(store.client, history_cap=HISTORY_CAP, retention_seconds=0,
                     keys=store.keys)
    job_ids = [swept.register(TYPES[i % 3], labels={"team": "xyz"[i % 3]},
                              heartbeat_timeout=3600 * (i % 2))[0].id for i in range(12)]
    lock = threading.Lock()
    threads = [threading.Thread(target=_one_thread, args=(swept, job_ids, lock, seed, 300))
               for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()

    live = indexed_from_hashes(store.client, store.keys)
    assert live, "every job was deleted: the run checked little"
    assert_store_holds(store.client, store.keys, live)
    for job_id in live:
        job = store.get(job_id)
        entries = store.history(job_id)
        assert [e["version"] for e in entries] == \
            list(range(max(1, job.version - HISTORY_CAP + 1), job.version + 1))
        assert entries[-1]["to"] == job.state
        assert len(entries) == min(job.version, HISTORY_CAP)
