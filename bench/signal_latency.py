"""Signal latency: from a ``pause`` command to the worker obeying it.

``python -m bench.signal_latency`` starts its own Redis and ``karmchari
serve``, runs one job under the worker library (``karmchari_client.Worker``)
in this process, with a worker thread that calls ``checkpoint()`` every
millisecond, and measures many times:

- observed: from just before ``POST /v1/jobs/{id}/commands`` {"command":
  "pause"} is sent to the moment the library learns the job is paused;
- acknowledged: to the moment the service has recorded the worker's
  ``observed_state=pause`` (the answer to that heartbeat is back).

Once with long-poll (the library's default, the process's shared watch;
heartbeats every 5 s carry no command in time) and once with heartbeats alone
every second. Between samples the job is resumed, and before each sample the
worker waits a random fraction of the heartbeat interval, so samples fall
anywhere in its cycle.

Then a fleet: ``--fleet-processes`` worker processes (10) of
``--fleet-jobs`` jobs each (100), all waiting through the library's one watch
per process, against the same single service process. Every job is paused
(one ``POST /v1/jobs/{id}/commands`` each, from ``--fleet-senders`` threads),
then resumed, ``--fleet-rounds`` times; a job's latency runs from just before
its own command is sent to the moment its worker process learns the new state
(CLOCK_MONOTONIC, which all processes of a Linux host share).

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
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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


def now_ns() -> int:
    """A clock every process of the host shares (Linux), unlike perf_counter."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def fleet_child(url: str, jobs: int) -> int:
    """One worker process of the fleet: registers ``jobs`` jobs, runs a Worker
    for each (heartbeats every 600 s: only the watch can bring a command in
    time, and the heartbeat threads open no connections of their own), and
    prints ``job <id>``, then ``ready``, then ``<state> <id> <ns>`` for each
    state it learns."""
    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            print(line, flush=True)

    client = Client(url)
    workers = []
    for _ in range(jobs):
        box: dict = {}
        worker = Worker.register(
            "teams", client=client, heartbeat_interval=600,
            on_state=lambda state, box=box: say(f"{state} {box['id']} {now_ns()}"))
        box["id"] = worker.job_id
        worker.start()
        workers.append(worker)
        say(f"job {worker.job_id}")
    say("ready")
    sys.stdin.read()  # until the parent closes it
    return 0


class Fleet:
    """The worker processes, and what they report."""

    def __init__(self, url: str, processes: int, jobs: int) -> None:
        self.processes = [subprocess.Popen(
            [sys.executable, "-m", "bench.signal_latency", "--fleet-child", url,
             "--fleet-jobs", str(jobs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        self.job_ids: list[str] = []
        self.ready = 0
        self.learned: dict[tuple[str, str], int] = {}
        self.changed = threading.Condition()
        for process in self.processes:
            threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            word, *rest = line.split()
            with self.changed:
                if word == "job":
                    self.job_ids.append(rest[0])
                elif word == "ready":
                    self.ready += 1
                else:
                    self.learned[(rest[0], word)] = int(rest[1])
                self.changed.notify_all()

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise TimeoutError(f"the fleet did not {what} in {timeout} s")

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()
            process.terminate()
        for process in self.processes:
            process.wait(30)


def gauge(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


def measure_fleet(url: str, processes: int, jobs: int, rounds: int, senders: int) -> dict:
    fleet = Fleet(url, processes, jobs)
    total = processes * jobs
    try:
        fleet.wait_for(lambda: fleet.ready == processes, "start")
        deadline = time.monotonic() + 60
        # Every job in a watch: the watches of a process grow turn by turn as
        # its jobs start (docs/architecture.md).
        while gauge(url, "karmchari_watched_jobs") != total:
            if time.monotonic() > deadline:
                raise TimeoutError("the watches did not cover every job")
            time.sleep(0.2)
        waiting = gauge(url, "karmchari_long_poll_waiters")
        operators = [Client(url) for _ in range(senders)]
        pause_ms: list[float] = []
        resume_ms: list[float] = []
        bursts = []
        with ThreadPoolExecutor(senders) as pool:
            for _ in range(rounds):
                for command, latencies in (("pause", pause_ms), ("start", resume_ms)):
                    sent: dict[str, int] = {}
                    chunks = [fleet.job_ids[i::senders] for i in range(senders)]

                    def send(ids: list[str], operator: Client, command=command,
                             sent=sent) -> None:
                        for job_id in ids:
                            sent[job_id] = now_ns()
                            operator.command(job_id, command)

                    began = now_ns()
                    list(pool.map(send, chunks, operators))
                    bursts.append((now_ns() - began) / 1e6)
                    fleet.wait_for(lambda command=command: all(
                        (i, command) in fleet.learned for i in fleet.job_ids),
                        f"learn {command}", timeout=60)
                    with fleet.changed:
                        latencies += [(fleet.learned.pop((i, command)) - sent[i]) / 1e6
                                      for i in fleet.job_ids]
        for operator in operators:
            operator.close()
    finally:
        fleet.close()
    return {"processes": processes, "jobs_per_process": jobs, "jobs": total, "rounds": rounds,
            "senders": senders, "waiting_requests": waiting,
            "command_burst_ms": {"median": round(statistics.median(bursts), 1),
                                 "max": round(max(bursts), 1)},
            "pause": summary([ms / 1000 for ms in pause_ms]),
            "resume": summary([ms / 1000 for ms in resume_ms])}


def fleet_markdown(fleet: dict) -> str:
    rows = ["| fleet | samples | observed median | observed p99 | max |",
            "|---|---:|---:|---:|---:|"]
    for name in ("pause", "resume"):
        f = fleet[name]
        rows.append(f"| {name} | {fleet['jobs'] * fleet['rounds']} | {f['median_ms']:.1f} ms | "
                    f"{f['p99_ms']:.1f} ms | {f['max_ms']:.1f} ms |")
    return (f"{fleet['jobs']:,} jobs in {fleet['processes']} worker processes of "
            f"{fleet['jobs_per_process']} jobs, one service process; "
            f"{int(fleet['waiting_requests'])} waiting requests covered them all. Each round "
            f"sent {fleet['jobs']:,} commands from {fleet['senders']} threads in "
            f"{fleet['command_burst_ms']['median']:.0f} ms (median of the bursts); a job's "
            "latency is from its own command to its worker process learning it.\n\n"
            + "\n".join(rows))


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
    parser.add_argument("--threads", type=int, default=24,
                        help="request threads of the service: at least twice the fleet's "
                             "processes, so that each one's watch gets a slot (default 24)")
    parser.add_argument("--fleet-processes", type=int, default=10)
    parser.add_argument("--fleet-jobs", type=int, default=100, help="jobs per process")
    parser.add_argument("--fleet-rounds", type=int, default=3)
    parser.add_argument("--fleet-senders", type=int, default=4,
                        help="threads sending the commands of a round")
    parser.add_argument("--fleet-child", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fleet_child:
        return fleet_child(args.fleet_child, args.fleet_jobs)
    load_before = os.getloadavg()[0]
    with BenchRedis() as redis_server, \
            BenchService(redis_server.url, threads=args.threads) as service:
        modes = {
            "long-poll": measure(service.base_url, args.long_poll_samples, long_poll=True,
                                 heartbeat_interval=5.0),
            f"heartbeats every {args.heartbeat_interval:g} s": measure(
                service.base_url, args.heartbeat_samples, long_poll=False,
                heartbeat_interval=args.heartbeat_interval),
        }
        fleet = measure_fleet(service.base_url, args.fleet_processes, args.fleet_jobs,
                              args.fleet_rounds, args.fleet_senders)
        redis_version = redis_server.version()
    result = {
        "benchmark": "signal_latency",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average_before": load_before},
        "store": redis_version,
        "service": {"threads": args.threads, "workers": 1},
        "method": "pause command sent -> worker library learns pause (observed) -> service "
                  "has recorded observed_state=pause (acknowledged); one job, a worker "
                  "thread calling checkpoint() every 1 ms, all on 127.0.0.1",
        "modes": modes,
        "fleet": fleet,
        "markdown": (f"Load average {load_before:.1f} on {os.cpu_count()} CPUs before this "
                     "run.\n\n" + markdown(modes) + "\n\n" + fleet_markdown(fleet)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "signal_latency.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
