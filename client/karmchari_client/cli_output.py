"""What the ``karmchari`` command prints: tables, jobs and JSON, with every
control character a job's fields may hold made visible."""

from __future__ import annotations

import datetime
import json
import re

from karmchari_client.client import Json

# Control characters (C0, DEL, C1): a name, message or reason that anyone with
# a worker token can set must not drive the reader's terminal (ESC sequences
# retitle windows, rewrite lines, or worse).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_UNESCAPED_RE = re.compile(r"[\x7f-\x9f]")
_FRACTION_RE = re.compile(r"\.\d+")


def shown(text: str) -> str:
    """``text`` for a terminal: each control character as a visible escape."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def local_time(iso: str | None) -> str:
    """An API time as the dashboard shows it: this machine's local time (``TZ``
    honoured) in ISO order, to the second, with the UTC offset
    (``2026-12-05 09:08:10 +01:00``). ``-o json`` prints the API's values
    instead; anything that is not a time with an offset is shown as given."""
    if not iso:
        return ""
    # Python 3.10's fromisoformat reads neither "Z" nor every length of
    # fraction; the fraction is not shown anyway.
    text = _FRACTION_RE.sub("", iso, count=1)
    try:
        moment = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z")
                                                 else text)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        return iso
    local = moment.astimezone()
    offset = local.utcoffset() or datetime.timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{local:%Y-%m-%d %H:%M:%S} {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


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
            local_time(job["updated_at"]), job.get("name") or ""]


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
              ("heartbeat at", local_time(job.get("heartbeat_at"))),
              ("created at", local_time(job["created_at"])),
              ("updated at", local_time(job["updated_at"])),
              ("started at", local_time(job.get("started_at"))),
              ("ended at", local_time(job.get("ended_at"))),
              ("retry of", job.get("retry_of") or ""),
              ("reruns", ", ".join(job.get("reruns") or []))]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {shown(value)}".rstrip())
