"""``karmchari import-legacy``: the Go service's jobs, brought into the current
model with the same ids, so the ids its users hold keep answering.

The Go service kept one hash per job, ``job:<id>`` with the fields ``type``
and ``state``, ``<id>`` being 32 lowercase hex characters (an MD5). This module
reads them by SCAN and decides what each becomes (the rules below, also in
docs/operations.md); ``lua/importLegacyJobs-9.lua`` writes them, one call per
shard and batch, and is what makes a second run import nothing twice.

Rules:

- state ``start``, ``pause`` or ``kill`` and a configured type: imported as is;
- any other state (the Go service stored any command it was sent, e.g.
  ``explode``, or none): imported as ``failed``, the history entry saying what
  the state was;
- no type (the Go service wrote a bare ``state`` when sent a command for an id
  it never registered): skipped;
- a type that is not configured (``--job-types``): skipped; configure the type
  and run again to import them;
- anything else under ``job:*`` (another id shape, other fields, not a hash,
  a type or state longer than 256 bytes): not the old shape, left alone.

Every case is counted in the report. Nothing is deleted from the source
unless asked (``--delete-source``), and then only keys imported and unchanged
since they were read.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from app.model import shard_of
from app.store import JobStore
from app.store.bindings import Bindings
from app.store.connection import StoreClient
from app.store.scripts import DeleteLegacyJobCode, ImportLegacyJobsCode, Scripts

ACTOR = "import"
LEGACY_STATES = ("start", "pause", "kill")
KEY_RE = re.compile(rb"job:([0-9a-f]{32})\Z")
EXAMPLES = 5  # keys shown per kind of skipped or left-alone job
# Longest type or state taken as the Go service's: a longer value is no job
# state, and copied into the history it would weigh on every read of the job.
MAX_VALUE_BYTES = 256

IMPORTED, ALREADY, UPDATED, ID_TAKEN, CHANGED_HERE = (
    ImportLegacyJobsCode.IMPORTED, ImportLegacyJobsCode.ALREADY, ImportLegacyJobsCode.UPDATED,
    ImportLegacyJobsCode.ID_TAKEN, ImportLegacyJobsCode.CHANGED_HERE)
# The report's count for each code.
COUNTED_AS = {IMPORTED: "imported", ALREADY: "already", UPDATED: "updated",
              ID_TAKEN: "id_taken", CHANGED_HERE: "changed_here"}


@dataclass(frozen=True)
class LegacyJob:
    """One Go job that can be imported: its id, type, the state it gets here
    and the state the source holds, as read ("" for none)."""

    id: str
    type: str
    state: str
    source_state: str


@dataclass
class Report:
    scanned: int = 0           # job:* keys seen
    imported: int = 0          # created here
    already: int = 0           # imported by an earlier run, unchanged since
    updated: int = 0           # imported earlier; the source's state has changed since
    invalid_state: int = 0     # of imported and updated: made failed, the state was not one
    no_type: int = 0           # skipped
    unknown_type: int = 0      # skipped
    not_legacy: int = 0        # left alone: not the old shape
    id_taken: int = 0          # left alone: a job with that id exists here, not imported
    changed_here: int = 0      # left alone: changed here since the import
    vanished: int = 0          # gone between SCAN and read
    deleted: int = 0           # source keys deleted (--delete-source)
    kept_changed: int = 0      # source keys not deleted: changed since read
    dry_run: bool = False
    seconds: float = 0.0
    unknown_types: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, key: bytes | str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(key.decode("utf-8", "backslashreplace") if isinstance(key, bytes)
                         else key)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


def classify(key: bytes, reply: object, job_types: Iterable[str]) -> tuple[str, LegacyJob | None]:
    """What the rules make of one ``job:*`` key, given its HGETALL reply (a
    dict of bytes, or the error a key of another type gives)."""
    match = KEY_RE.match(key)
    if not match or not isinstance(reply, dict):
        return "not_legacy", None
    if not reply:
        return "vanished", None
    if any(name != b"type" and name != b"state" for name in reply):
        return "not_legacy", None
    if any(len(value) > MAX_VALUE_BYTES for value in reply.values()):
        return "not_legacy", None
    try:
        fields = {name.decode(): value.decode("utf-8") for name, value in reply.items()}
    except UnicodeDecodeError:
        return "not_legacy", None
    job_type, state = fields.get("type"), fields.get("state", "")
    if not job_type:
        return "no_type", None
    if job_type not in job_types:
        return "unknown_type", None
    target = state if state in LEGACY_STATES else "failed"
    return ("valid" if target == state else "invalid_state"), LegacyJob(
        match[1].decode(), job_type, target, state)


def predict(have: list[str | None], job: LegacyJob) -> ImportLegacyJobsCode:
    """The code importLegacyJobs would answer, from the job's state,
    legacy_state, import_version and version here: for --dry-run only."""
    state, legacy_state, import_version, version = have
    if state is None:
        return IMPORTED
    if import_version is None:
        return ID_TAKEN
    if legacy_state == job.source_state:
        return ALREADY
    if version != import_version:
        return CHANGED_HERE
    return ALREADY if state == job.state else UPDATED


T = TypeVar("T")


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class LegacyImport:
    def __init__(self, source: StoreClient, store: JobStore, job_types: Iterable[str], *,
                 history_cap: int, retention_seconds: int, batch: int = 1000,
                 dry_run: bool = False, delete_source: bool = False,
                 progress: Callable[[Report], None] | None = None) -> None:
        """``source`` must answer bytes (``decode_responses=False``): the
        old keys are read as they are, whatever their encoding."""
        self.source = source
        self.store = store
        self.job_types = frozenset(job_types)
        self.history_cap = history_cap
        self.retention_seconds = retention_seconds
        self.batch = batch
        self.dry_run = dry_run
        self.delete_source = delete_source and not dry_run
        self.progress = progress or (lambda report: None)
        self.report = Report(dry_run=dry_run)
        self._source = Bindings(Scripts(source), store.keys)

    def run(self) -> Report:
        started = time.monotonic()
        for keys, replies in self._read_ahead():
            self._import_chunk(keys, replies)
            self.report.seconds = time.monotonic() - started
            self.progress(self.report)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _read_ahead(self) -> Iterator[tuple[list[bytes], list[Any]]]:
        """(keys, HGETALL replies) a batch at a time, read by a thread one batch
        ahead, so reading the source and writing the target overlap."""
        # A batch of keys and their replies (an error in place of a failed one),
        # the reader's own error, or None at the end.
        batches: queue.Queue[tuple[list[bytes], list[Any]] | Exception | None] = \
            queue.Queue(maxsize=1)
        stop = threading.Event()

        def read() -> None:
            try:
                keys = self.source.scan_iter(match=b"job:*", count=self.batch)
                for chunk in _chunks(iter(keys), self.batch):
                    pipe = self.source.pipeline(transaction=False)
                    for key in chunk:
                        pipe.hgetall(key)
                    batches.put((chunk, pipe.execute(raise_on_error=False)))
                    if stop.is_set():
                        return
                batches.put(None)
            except Exception as error:  # noqa: BLE001 - raised again by the consumer
                batches.put(error)

        reader = threading.Thread(target=read, name="import-legacy-reader", daemon=True)
        reader.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                batches.get_nowait()  # unblock a reader waiting to put
            reader.join(30)

    def _import_chunk(self, keys: list[bytes], replies: list[Any]) -> None:
        report = self.report
        report.scanned += len(keys)
        jobs: list[LegacyJob] = []
        for key, reply in zip(keys, replies, strict=True):
            kind, job = classify(key, reply, self.job_types)
            if job is None:
                report.note(kind, key)
                if kind == "unknown_type":
                    name = reply[b"type"].decode("utf-8", "backslashreplace")
                    report.unknown_types[name] = report.unknown_types.get(name, 0) + 1
                continue
            jobs.append(job)
        codes = self._predict(jobs) if self.dry_run else self._write(jobs)
        done = []
        for job, code in zip(jobs, codes, strict=True):
            report.note(COUNTED_AS[code], f"job:{job.id}")
            if code in (IMPORTED, UPDATED) and job.state != job.source_state:
                report.note("invalid_state", f"job:{job.id}")
            if code in (IMPORTED, ALREADY, UPDATED):
                done.append(job)
        if self.delete_source and done:
            self._delete_source(done)

    def _by_shard(self, jobs: list[LegacyJob]) -> dict[str, list[int]]:
        shards: dict[str, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            shards[shard_of(job.id)].append(index)
        return shards

    def _write(self, jobs: list[LegacyJob]) -> list[ImportLegacyJobsCode]:
        """One importLegacyJobs call per shard, all in one pipeline."""
        binding = self.store.bindings.import_legacy_jobs
        calls, order = [], []
        for shard_name, indexes in self._by_shard(jobs).items():
            calls.append(binding.call(
                self.store.keys.shards[shard_name],
                [(jobs[i].id, jobs[i].type, jobs[i].state, jobs[i].source_state)
                 for i in indexes],
                actor=ACTOR, history_cap=self.history_cap,
                retention_seconds=self.retention_seconds))
            order.append(indexes)
        codes = [ALREADY] * len(jobs)
        for indexes, reply in zip(order, self.store.bindings.run_pipeline(calls), strict=True):
            for index, code in zip(indexes, binding.decode(reply), strict=True):
                codes[index] = code
        return codes

    def _predict(self, jobs: list[LegacyJob]) -> list[ImportLegacyJobsCode]:
        pipe = self.store.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(self.store.keys.for_job(job.id).job(job.id),
                       "state", "legacy_state", "import_version", "version")
        return [predict(have, job) for have, job in zip(pipe.execute(), jobs, strict=True)]

    def _delete_source(self, jobs: list[LegacyJob]) -> None:
        binding = self._source.delete_legacy_job
        calls = [binding.call(job.id, job.type, job.source_state) for job in jobs]
        for deleted in self._source.run_pipeline(calls):
            if binding.decode(deleted) == DeleteLegacyJobCode.DELETED:
                self.report.deleted += 1
            else:
                self.report.kept_changed += 1


def summary(report: Report) -> str:
    """The report for people, one line per count that is not zero."""
    lines = [f"{report.scanned} job:* keys read in {report.seconds:.1f} s"
             + (" (dry run: nothing written)" if report.dry_run else "")]
    would = "would be " if report.dry_run else ""

    def line(count: int, text: str, kind: str | None = None) -> None:
        if count:
            examples = report.examples.get(kind or "", [])
            shown = f"  e.g. {', '.join(examples)}" if examples and kind else ""
            lines.append(f"  {count:>9}  {text}{shown}")

    line(report.imported, f"{would}imported")
    line(report.updated, f"{would}updated: imported before, the source's state has "
         "changed since")
    line(report.already, "already imported, unchanged")
    line(report.invalid_state, f"of these, {would}imported as failed: not a state "
         "(the history entry keeps the old value)", "invalid_state")
    line(report.no_type, "skipped: no type (a command sent to an id never registered)",
         "no_type")
    types = ", ".join(sorted(report.unknown_types))
    line(report.unknown_type, f"skipped: type not configured ({types}); add it to "
         "--job-types and run again to import these", "unknown_type")
    line(report.not_legacy, "left alone: not the Go service's shape", "not_legacy")
    line(report.id_taken, "left alone: a job with this id exists here, not imported",
         "id_taken")
    line(report.changed_here, "left alone: changed here since it was imported",
         "changed_here")
    line(report.vanished, "gone before they could be read")
    line(report.deleted, "source keys deleted")
    line(report.kept_changed, "source keys kept: changed since they were read",
         "kept_changed")
    return "\n".join(lines)
