"""Where the service's time goes under load: py-spy samples the thread that
holds the GIL (the Python work that bounds one process's throughput) while
wrk drives one endpoint. Needs py-spy (``pip install py-spy``) and the right
to ptrace the service (root, or kernel.yama.ptrace_scope=0)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.http_load import ENDPOINTS, HEALTHZ, Endpoint, JobSets, wrk_command, wrk_env
from bench.servers import BenchError, BenchService

PROFILED = ("healthz", "old_get_job_state", "old_post_job_state", "old_register_job",
            "v1_get_job", "v1_command", "v1_register", "v1_heartbeats")

# Self time goes to the category of the innermost Python frame's file (py-spy
# names files relative to their sys.path entry: "waitress/task.py").
CATEGORIES = (
    ("waitress", ("waitress/",)),
    ("falcon", ("falcon/",)),
    ("logging", ("logging/",)),
    ("prometheus", ("prometheus_client/",)),
    ("redis-py", ("redis/", "hiredis")),
    ("jsonschema", ("jsonschema", "referencing/")),
    ("json", ("json/",)),
    ("karmchari", ("app/",)),
    ("threads", ("threading.py", "queue.py")),
)


def _file(frame: str) -> str:
    """"name (file:line)" -> "file"."""
    return frame.rpartition(" (")[2].rpartition(":")[0]


def category(frame: str) -> str:
    path = _file(frame)
    for name, prefixes in CATEGORIES:
        if path.startswith(prefixes):
            return name
    return "other"


def summarize_stacks(raw: str, top: int = 12) -> dict:
    """Shares of samples from py-spy's raw (collapsed) output: by category of
    the innermost frame, and the Karmchari functions most often on the stack."""
    by_category: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        by_category[category(frames[-1])] += samples
        ours = {f"{f.rpartition(' (')[0]} ({_file(f)})" for f in frames
                if _file(f).startswith("app/")}
        for function in ours:
            inclusive[function] += samples
    if not total:
        return {"samples": 0, "categories": {}, "functions": {}}
    return {"samples": total,
            "categories": {c: round(100 * n / total, 1) for c, n in by_category.most_common()},
            "functions": {f: round(100 * n / total, 1) for f, n in inclusive.most_common(top)}}


def profile_endpoint(service: BenchService, endpoint: Endpoint, ids_file: Path | None,
                     seconds: float, connections: int) -> dict:
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
    if py_spy is None:
        raise BenchError("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        load = subprocess.Popen(
            wrk_command(service.base_url, endpoint, ids_file, seconds + 2, connections),
            env=wrk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run = subprocess.run(
                [py_spy, "record", "--pid", str(service.pids()[0]), "--duration",
                 str(int(seconds)), "--rate", "250", "--gil", "--nonblocking", "--format", "raw",
                 "--output", str(out)], capture_output=True, text=True)
        finally:
            load.wait()
        if run.returncode != 0 or not out.exists():
            raise BenchError(f"py-spy failed (ptrace rights?):\n{run.stderr[-2000:]}")
        return {"label": endpoint.label, **summarize_stacks(out.read_text())}


def profile_endpoints(service: BenchService, jobs: JobSets, *,
                      connections: int, seconds: float = 6, log=print) -> dict:
    profiles = {}
    for endpoint in (HEALTHZ, *ENDPOINTS):
        if endpoint.key in PROFILED:
            profiles[endpoint.key] = profile_endpoint(
                service, endpoint, jobs.file(endpoint.ids, 0), seconds, connections)
            shares = ", ".join(f"{c} {p:.0f}%"
                               for c, p in profiles[endpoint.key]["categories"].items())
            log(f"  profile {endpoint.label}: {shares}")
    return profiles
