"""A Hypothesis state machine drives the whole app (old endpoints and JSON
API v1, through Falcon's TestClient on a real Redis) and checks every answer
against a plain-Python model of SPEC §2."""

from __future__ import annotations

import urllib.parse
import uuid
from dataclasses import dataclass, field

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

from tests.spec_table import COMMANDS, TARGET, TERMINAL, outcome

TYPES = ("upload", "export", "teams")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

unknown_ids = st.one_of(
    st.text("0123456789abcdef", min_size=32, max_size=32),  # well formed, never registered
    st.sampled_from(["abc", "0" * 31, "0" * 33, "A" * 32, "g" * 32]),
)
invalid_commands = st.sampled_from(["explode", "PAUSE", "failed", "pause ", "resume"])
reasons = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


@dataclass
class ModelJob:
    type: str
    state: str = "start"
    # (command, from, to, reason) of every accepted change, registration first.
    changes: list[tuple[str, str, str, str]] = field(
        default_factory=lambda: [("register", "", "start", "")])

    @property
    def version(self) -> int:
        return len(self.changes)


class JobApiMachine(RuleBasedStateMachine):
    """``client`` and ``store`` are set by the test that runs the machine."""

    client = None
    store = None
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
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

    def apply(self, job_id: str, command: str, reason: str) -> str:
        job = self.model[job_id]
        result = outcome(job.state, command)
        if result == "changed":
            job.changes.append((command, job.state, TARGET[command], reason))
            job.state = TARGET[command]
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
          labels=st.dictionaries(st.sampled_from(["team", "env"]), st.sampled_from("xyz"),
                                 max_size=2))
    def register_v1(self, job_type, name, labels):
        response = self.client.simulate_post(
            "/v1/jobs", json={"type": job_type, "name": name, "labels": labels})
        assert response.status_code == 201, response.text
        body = response.json
        assert body["id"] not in self.model
        assert response.headers["location"] == f"/v1/jobs/{body['id']}"
        assert (body["name"], body["labels"]) == (name, labels)
        self.model[body["id"]] = ModelJob(job_type)
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
                (409, f"Command refused: {job_id} -- {state}")
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
                (200, f"{job_id} -- {self.model[job_id].state}")

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
        assert [(e["version"], e["command"], e["from"], e["to"], e["reason"]) for e in entries] \
            == [(version, *change)
                for version, change in enumerate(self.model[job_id].changes, start=1)]

    # -- heartbeats and deleting -----------------------------------------------

    @rule(job_id=jobs, progress=st.integers(0, 100))
    def heartbeat(self, job_id, progress):
        response = self.client.simulate_post(f"/v1/jobs/{job_id}/heartbeat",
                                             json={"progress": progress})
        if not self.known(job_id):
            self.assert_problem(response, 404, "job_not_found")
            return
        job = self.model[job_id]
        assert response.status_code == 200, response.text
        assert (response.json["state"], response.json["version"]) == (job.state, job.version)

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

    @invariant()
    def redis_holds_the_model(self):
        """Every job's state, version and history length in Redis are the
        model's; deleted jobs left no hash and no history behind."""
        ids = sorted(self.model)
        pipe = self.store.client.pipeline(transaction=False)
        for job_id in ids:
            shard = self.store.keys.for_job(job_id)
            pipe.hmget(shard.job(job_id), "state", "version")
            pipe.llen(shard.history(job_id))
        replies = pipe.execute()
        for job_id, (state, version), length in zip(ids, replies[::2], replies[1::2],
                                                   strict=True):
            if job_id in self.deleted:
                assert (state, version, length) == (None, None, 0)
                continue
            job = self.model[job_id]
            assert (state, int(version), length) == (job.state, job.version, job.version)


def test_the_api_agrees_with_the_model(client, store):
    machine = type("Machine", (JobApiMachine,), {"client": client, "store": store})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=100, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
