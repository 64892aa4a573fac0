"""What the worker index costs a heartbeat: recordHeartbeats before and after.

``python -m bench.heartbeat_cost`` starts its own Redis, registers jobs, and
runs the heartbeat script of this tree beside the one of ``--old-ref`` (git,
default ``d9e3bdd``, main before the worker index:
``lua/recordHeartbeats-1.lua``, which keeps no worker index, its includes
expanded as today's) on the same jobs, in turns. For each it reports the Redis commands
one call runs (INFO commandstats: the script's own commands counted by name)
and the server time per call (``usec_per_call`` of EVALSHA, which includes
the commands it runs), for a single heartbeat and for batches of 100 jobs of
one shard, in the steady state: every job already has its worker, so a
heartbeat moves nothing in the index; the first heartbeat of a job (which
does) is reported apart. Writes bench/results/heartbeat_cost.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from app.model import new_job_id
from app.store import JobStore, connect, heartbeat_args
from app.store.scripts import expand
from bench import RESULTS, ROOT
from bench.servers import BenchRedis

ARGS = heartbeat_args("host-7", 40.0, "working", "start")


def commandstats(client) -> dict[str, tuple[int, int]]:
    return {name[len("cmdstat_"):]: (int(stats["calls"]), int(stats["usec"]))
            for name, stats in client.info("commandstats").items()}


def measure(client, sha: str, keys_of, jobs: list[str], per_call: int, calls: int) -> dict:
    """Commands per call (by name) and server µs per call of ``calls`` EVALSHA."""
    client.config_resetstat()
    for n in range(calls):
        chunk = [jobs[(n * per_call + i) % len(jobs)] for i in range(per_call)]
        keys = keys_of(chunk)
        args = [""] + [a for _ in chunk for a in ARGS]
        client.evalsha(sha, len(keys), *keys, *args)
    stats = commandstats(client)
    evalsha_calls, evalsha_usec = stats.pop("evalsha")
    stats = {name: v for name, v in stats.items() if not name.startswith("config")}
    return {"commands_per_call": {name: round(c / calls, 2) for name, (c, _) in
                                  sorted(stats.items())},
            "commands_per_call_total": round(sum(c for c, _ in stats.values()) / calls, 2),
            "server_us_per_call": round(evalsha_usec / evalsha_calls, 1),
            "server_us_per_heartbeat": round(evalsha_usec / evalsha_calls / per_call, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeat_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-ref", default="d9e3bdd")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "heartbeat_cost.json")
    options = parser.parse_args(argv)
    # The old script as Redis ran it: its includes are the same as today's.
    old_source = expand(subprocess.run(
        ["git", "show", f"{options.old_ref}:lua/recordHeartbeats-1.lua"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    with BenchRedis() as server:
        store = JobStore(connect(server.url))
        shard = store.keys.shards["a"]
        jobs = [new_job_id("a") for _ in range(1000)]
        for job_id in jobs:  # registerJob calls, all in shard a
            store.bindings.register_job.call(
                shard, job_id, "teams", name="n", labels={}, heartbeat_timeout=3600, actor="",
                history_cap=100, idempotency_key=None, idempotency_ttl=0, fingerprint="",
                owner="").run()
        client = server.client()
        new_sha = store.scripts.record_heartbeats.script.sha
        store.scripts.load_all()
        old_sha = client.script_load(old_source)
        scripts = {
            "before": (old_sha, lambda ids: [shard.deadlines, *(shard.job(i) for i in ids)]),
            "after": (new_sha, lambda ids: [*shard.heartbeat_keys(),
                                            *(shard.job(i) for i in ids)]),
        }
        # The first heartbeat of each job (after: started_at, worker index, counts).
        first = {"after": measure(client, new_sha, scripts["after"][1], jobs, 1, len(jobs))}
        results: dict = {name: {"single": [], "batch_100": []} for name in scripts}
        for _ in range(options.rounds):
            for name, (sha, keys_of) in scripts.items():
                results[name]["single"].append(
                    measure(client, sha, keys_of, jobs, 1, options.calls))
                results[name]["batch_100"].append(
                    measure(client, sha, keys_of, jobs, 100, options.calls // 50))
        version = server.version()
    summary = {}
    for kind in ("single", "batch_100"):
        before = sorted(r["server_us_per_heartbeat"] for r in results["before"][kind])
        after = sorted(r["server_us_per_heartbeat"] for r in results["after"][kind])
        mid = len(before) // 2
        summary[kind] = {
            "before_us_per_heartbeat": before[mid], "after_us_per_heartbeat": after[mid],
            "extra_us_per_heartbeat": round(after[mid] - before[mid], 2),
            "before_commands_per_call": results["before"][kind][0]["commands_per_call"],
            "after_commands_per_call": results["after"][kind][0]["commands_per_call"]}
    output = {"redis": version, "calls": options.calls, "rounds": options.rounds,
              "first_heartbeat_after": first["after"], "steady": summary, "runs": results}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({"first_heartbeat_after": first["after"], "steady": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
