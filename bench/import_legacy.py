"""``karmchari import-legacy`` on a large Go store: ``--jobs`` job hashes
written as the Go service writes them, imported by the real command (a
subprocess, start-up included), then imported again (nothing to write).

    python -m bench.import_legacy --jobs 100000

Source and target are two ``redis-server``s on unix sockets, started here.
Writes bench/results/import_legacy.json.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from bench import RESULTS, ROOT
from bench.servers import BenchRedis

# The mix of states: mostly running, some paused and killed, a few with the
# Go service's invalid-command bug, a few commands sent to unknown ids.
MIX = (("start", 0.70), ("pause", 0.20), ("kill", 0.09), ("explode", 0.01))
TYPES = ("upload", "export", "teams")
TYPELESS_SHARE = 0.001


def karmchari() -> list[str]:
    script = Path(sys.executable).with_name("karmchari")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def load(source: BenchRedis, jobs: int, seed: int = 1) -> dict[str, int]:
    """The Go service's commands: HSET type and state on register, HSET state
    on a command."""
    rng = random.Random(seed)
    client = source.client()
    counts: dict[str, int] = {}
    states, weights = zip(*MIX, strict=True)
    pipe = client.pipeline(transaction=False)
    for n in range(jobs):
        job_id = hashlib.md5(f"{seed}-{n}".encode()).hexdigest()
        pipe.execute_command("HSET", f"job:{job_id}", "type", rng.choice(TYPES),
                             "state", "start")
        state = rng.choices(states, weights)[0]
        if state != "start":
            pipe.execute_command("HSET", f"job:{job_id}", "state", state)
        counts[state] = counts.get(state, 0) + 1
        if rng.random() < TYPELESS_SHARE:
            typeless = hashlib.md5(f"{seed}-typeless-{n}".encode()).hexdigest()
            pipe.execute_command("HSET", f"job:{typeless}", "state", "pause")
            counts["typeless"] = counts.get("typeless", 0) + 1
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    client.close()
    return counts


def run_import(source: BenchRedis, target: BenchRedis, batch: int) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
    started = time.perf_counter()
    done = subprocess.run([*karmchari(), "import-legacy", "--from-url", source.url,
                           "--redis-url", target.url, "--batch", str(batch), "--output", "json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import-legacy failed: {done.stderr}")
    return seconds, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_legacy")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)

    source, target = BenchRedis().start(), BenchRedis().start()
    try:
        load_started = time.perf_counter()
        counts = load(source, args.jobs)
        loaded = time.perf_counter() - load_started
        print(f"loaded {args.jobs:,} Go jobs in {loaded:.1f} s: {counts}", flush=True)
        first_s, first = run_import(source, target, args.batch)
        print(f"import: {first_s:.1f} s, {first['imported']:,} imported "
              f"({first['invalid_state']:,} as failed), {first['no_type']} without a type",
              flush=True)
        second_s, second = run_import(source, target, args.batch)
        print(f"again: {second_s:.1f} s, {second['already']:,} already imported, "
              f"{second['imported']} imported", flush=True)
        assert first["imported"] == args.jobs and second["already"] == args.jobs
        memory = target.client().info("memory")["used_memory"]
    finally:
        source.close()
        target.close()
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": os.getloadavg()[0]},
        "jobs": args.jobs, "batch": args.batch, "mix": counts,
        "first_run_seconds": round(first_s, 2), "jobs_per_second": round(args.jobs / first_s),
        "second_run_seconds": round(second_s, 2), "target_used_memory": memory,
        "first_report": first, "second_report": second,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "import_legacy.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
