"""Signal latency: from a ``pause`` command to the worker obeying it.

``python -m bench.signal_latency`` starts its own Redis and ``karmchari
serve``, runs one job under the worker library (``karmchari_client.Worker``)
in this process, with a worker thread that calls ``checkpoint()`` every
millisecond, and measures many times:

- observed: from just before ``POST /v1/jobs/{id}/commands`` {"command":
  "pause"} is sent to the moment the library learns the job is paused;
- acknowledged: to the moment the service has recorded the worker's
  ``observed_state=pause`` (the answer to that heartbeat is back).

Once with long-poll (the library's default; heartbeats every 5 s carry no
command in time) and once with heartbeats alone every second. Between
samples the job is resumed, and before each sample the worker waits a random
fraction of the heartbeat interval, so samples fall anywhere in its cycle.
Writes bench/results/signal_latency.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from bench import RESULTS
from bench.servers import BenchRedis, BenchService
from karmchari_client import Client, JobEnded, Worker


@dataclass
class Timings:
    """When the library learned each state, and when the service confirmed
    each observed state it reported (perf_counter seconds)."""

    learned: dict[str, float] = field(default_factory=dict)
    confirmed: dict[str, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def mark(self, table: dict[str, float], state: str | None) -> None:
        with self.changed:
            table[state or ""] = time.perf_counter()
            self.changed.notify_all()

    def wait(self, table: dict[str, float], state: str, timeout: float = 30) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: state in table, timeout):
                raise TimeoutError(f"the worker did not reach {state} in {timeout} s")
            return table[state]

    def forget(self) -> None:
        with self.changed:
            self.learned.clear()
            self.confirmed.clear()


class ConfirmingClient(Client):
    """A Client that notes when the service answers a heartbeat that reported
    an observed state: that is when the acknowledgement is recorded."""

    def __init__(self, url: str, timings: Timings) -> None:
        super().__init__(url)
        self._timings = timings

    def heartbeat(self, job_id: str, **report) -> dict:
        answer = super().heartbeat(job_id, **report)
        self._timings.mark(self._timings.confirmed, report.get("observed_state"))
        return answer


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of the values
    at or below it (with 30 samples, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summary(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"median_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 0.99), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def measure(url: str, samples: int, *, long_poll: bool, heartbeat_interval: float) -> dict:
    timings = Timings()
    worker = Worker.register("teams", client=ConfirmingClient(url, timings),
                             heartbeat_interval=heartbeat_interval, long_poll=long_poll,
                             on_state=lambda state: timings.mark(timings.learned, state))
    operator = Client(url)
    observed, acknowledged = [], []
    with worker:
        def work() -> None:
            try:
                while True:
                    worker.checkpoint()
                    time.sleep(0.001)
            except JobEnded:
                pass

        threading.Thread(target=work, name="bench-work", daemon=True).start()
        for _ in range(samples):
            time.sleep(random.uniform(0, heartbeat_interval if not long_poll else 0.02))
            timings.forget()
            started = time.perf_counter()
            operator.command(worker.job_id, "pause")
            observed.append(timings.wait(timings.learned, "pause") - started)
            acknowledged.append(timings.wait(timings.confirmed, "pause") - started)
            timings.forget()
            operator.command(worker.job_id, "start")
            timings.wait(timings.learned, "start")
            timings.wait(timings.confirmed, "start")  # resumed and said so
    operator.close()
    return {"samples": samples, "long_poll": long_poll,
            "heartbeat_interval_s": heartbeat_interval,
            "observed": summary(observed), "acknowledged": summary(acknowledged),
            "observed_ms": [round(s * 1000, 3) for s in observed],
            "acknowledged_ms": [round(s * 1000, 3) for s in acknowledged]}


def markdown(modes: dict[str, dict]) -> str:
    rows = ["| mode | samples | observed median | observed p99 | acknowledged median "
            "| acknowledged p99 |", "|---|---:|---:|---:|---:|---:|"]
    for name, mode in modes.items():
        o, a = mode["observed"], mode["acknowledged"]
        rows.append(f"| {name} | {mode['samples']} | {o['median_ms']:.1f} ms | "
                    f"{o['p99_ms']:.1f} ms | {a['median_ms']:.1f} ms | {a['p99_ms']:.1f} ms |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.signal_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-poll-samples", type=int, default=100)
    parser.add_argument("--heartbeat-samples", type=int, default=30)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0,
                        help="seconds between heartbeats in the heartbeats-only mode")
    parser.add_argument("--threads", type=int, default=16, help="waitress threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with BenchRedis() as redis_server, \
            BenchService(redis_server.url, threads=args.threads) as service:
        modes = {
            "long-poll": measure(service.base_url, args.long_poll_samples, long_poll=True,
                                 heartbeat_interval=5.0),
            f"heartbeats every {args.heartbeat_interval:g} s": measure(
                service.base_url, args.heartbeat_samples, long_poll=False,
                heartbeat_interval=args.heartbeat_interval),
        }
        redis_version = redis_server.version()
    result = {
        "benchmark": "signal_latency",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]},
        "store": redis_version,
        "service": {"threads": args.threads, "workers": 1},
        "method": "pause command sent -> worker library learns pause (observed) -> service "
                  "has recorded observed_state=pause (acknowledged); one job, a worker "
                  "thread calling checkpoint() every 1 ms, all on 127.0.0.1",
        "modes": modes,
        "markdown": markdown(modes),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "signal_latency.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
