"""What the ``karmchari`` command prints: tables, jobs and JSON, with every
control character a job's fields may hold made visible."""

from __future__ import annotations

import json
import re

from karmchari_client.client import Json

# Control characters (C0, DEL, C1): a name, message or reason that anyone with
# a worker token can set must not drive the reader's terminal (ESC sequences
# retitle windows, rewrite lines, or worse).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_UNESCAPED_RE = re.compile(r"[\x7f-\x9f]")


def shown(text: str) -> str:
    """``text`` for a terminal: each control character as a visible escape."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def print_json(value: object) -> None:
    # json escapes C0 itself; DEL and C1 only with ensure_ascii, which would
    # also escape every non-ASCII letter.
    text = json.dumps(value, indent=2, ensure_ascii=False)
    print(_JSON_UNESCAPED_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def progress_text(job: Json) -> str:
    return "" if job.get("progress") is None else f"{job['progress']:g}%"


def job_row(job: Json) -> list[str]:
    return [job["id"], job["type"], job["state"], job.get("observed_state") or "-",
            "yes" if job.get("stalled") else "", progress_text(job), job.get("worker") or "",
            job["updated_at"], job.get("name") or ""]


JOB_HEADERS = ["ID", "TYPE", "STATE", "OBSERVED", "STALLED", "PROGRESS", "WORKER", "UPDATED",
               "NAME"]


def print_job(job: Json) -> None:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(job.get("labels", {}).items()))
    fields = [("id", job["id"]), ("type", job["type"]), ("state", job["state"]),
              ("observed state", job.get("observed_state") or "-"),
              ("stalled", "yes" if job.get("stalled") else "no"),
              ("version", str(job["version"])), ("name", job.get("name") or ""),
              ("labels", labels), ("owner", job.get("owner") or "-"),
              ("worker", job.get("worker") or ""),
              ("progress", progress_text(job)), ("message", job.get("message") or ""),
              ("heartbeat timeout", f"{job.get('heartbeat_timeout', 0)}s"),
              ("heartbeat at", job.get("heartbeat_at") or ""),
              ("created at", job["created_at"]), ("updated at", job["updated_at"]),
              ("started at", job.get("started_at") or ""),
              ("ended at", job.get("ended_at") or ""),
              ("retry of", job.get("retry_of") or ""),
              ("reruns", ", ".join(job.get("reruns") or []))]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {shown(value)}".rstrip())
