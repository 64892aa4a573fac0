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

Then a fleet: ``--fleet-processes`` worker processes (20) of
``--fleet-jobs`` jobs each (500), all waiting through the library's one watch
per process and heartbeating every ``--fleet-heartbeat-interval`` seconds (5)
through its one batch per process, against the same single service process.
First the fleet idles for ``--fleet-idle-intervals`` heartbeat intervals (3),
and the service's ``/metrics`` count the heartbeat requests meanwhile. Then
every job is paused (one ``POST /v1/jobs/{id}/commands`` each, from
``--fleet-senders`` threads), then resumed, ``--fleet-rounds`` times; a job's
latency runs from just before its own command is sent to the moment its
worker process learns the new state (CLOCK_MONOTONIC, which all processes of
a Linux host share). The service process's resident memory (VmRSS in
``/proc``) is sampled throughout.

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
from karmchari_client.heartbeats import Heartbeater


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
    """The Client of the process's shared heartbeats (one job here): notes
    when the service answers a heartbeat that reported an observed state,
    which is when the acknowledgement is recorded."""

    def __init__(self, url: str, timings: Timings) -> None:
        super().__init__(url)
        self._timings = timings

    def heartbeat(self, job_id: str, **report) -> dict:
        answer = super().heartbeat(job_id, **report)
        self._timings.mark(self._timings.confirmed, report.get("observed_state"))
        return answer

    def heartbeats(self, reports: list[dict]) -> list[dict]:
        results = super().heartbeats(reports)
        for report in reports:
            self._timings.mark(self._timings.confirmed, report.get("observed_state"))
        return results


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
    Heartbeater.shared(url, None).client = ConfirmingClient(url, timings)
    worker = Worker.register("teams", url, heartbeat_interval=heartbeat_interval,
                             long_poll=long_poll,
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


def fleet_child(url: str, jobs: int, heartbeat_interval: float) -> int:
    """One worker process of the fleet: registers ``jobs`` jobs, runs a Worker
    for each (heartbeats every ``heartbeat_interval`` seconds, all the jobs of
    the process in one request), and prints ``job <id>``, then ``ready``, then
    ``<state> <id> <ns>`` for each state it learns."""
    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            print(line, flush=True)

    client = Client(url)
    workers = []
    for _ in range(jobs):
        box: dict = {}
        worker = Worker.register(
            "teams", client=client, heartbeat_interval=heartbeat_interval,
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

    def __init__(self, url: str, processes: int, jobs: int, heartbeat_interval: float) -> None:
        self.processes = [subprocess.Popen(
            [sys.executable, "-m", "bench.signal_latency", "--fleet-child", url,
             "--fleet-jobs", str(jobs), "--fleet-heartbeat-interval", str(heartbeat_interval)],
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

    def wait_for(self, condition, what: str, timeout: float = 600) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise TimeoutError(f"the fleet did not {what} in {timeout} s")

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()
            process.terminate()
        for process in self.processes:
            process.wait(30)


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        return answer.read().decode()


def gauge(url: str, name: str) -> float:
    for line in metrics(url).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def requests_served(url: str, route: str, status: str | None = None) -> int:
    """POSTs the service answered on ``route`` (with ``status``, or any)."""
    total = 0.0
    for line in metrics(url).splitlines():
        if line.startswith("karmchari_http_requests_total{") and f'route="{route}"' in line \
                and 'method="POST"' in line and (status is None or f'status="{status}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class RssSampler:
    """The largest resident set (VmRSS, /proc) of the service's processes,
    sampled twice a second in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.largest_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status
                              if line.startswith("VmRSS:"))
        self.largest_kb = max(self.largest_kb, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def stop(self) -> int:
        """The last sample, in kB."""
        self._stop.set()
        self._thread.join()
        return self.sample()


HEARTBEATS_ROUTE, ONE_HEARTBEAT_ROUTE = "/v1/heartbeats", "/v1/jobs/{job_id}/heartbeat"


def measure_fleet(url: str, service_pids: list[int], processes: int, jobs: int, rounds: int,
                  senders: int, heartbeat_interval: float, idle_intervals: int) -> dict:
    rss = RssSampler(service_pids)
    fleet = Fleet(url, processes, jobs, heartbeat_interval)
    total = processes * jobs
    try:
        fleet.wait_for(lambda: fleet.ready == processes, "start")
        deadline = time.monotonic() + 300
        # Every job in a watch: the watches of a process grow turn by turn as
        # its jobs start (docs/architecture.md).
        while gauge(url, "karmchari_watched_jobs") != total:
            if time.monotonic() > deadline:
                raise TimeoutError("the watches did not cover every job")
            time.sleep(0.2)
        waiting = gauge(url, "karmchari_long_poll_waiters")
        # Idle: only the heartbeats (and the watches) run. Count them at the service.
        batches, singles = (requests_served(url, HEARTBEATS_ROUTE),
                            requests_served(url, ONE_HEARTBEAT_ROUTE))
        time.sleep(idle_intervals * heartbeat_interval)
        batches = requests_served(url, HEARTBEATS_ROUTE) - batches
        singles = requests_served(url, ONE_HEARTBEAT_ROUTE) - singles
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
                        f"learn {command}", timeout=300)
                    with fleet.changed:
                        latencies += [(fleet.learned.pop((i, command)) - sent[i]) / 1e6
                                      for i in fleet.job_ids]
        for operator in operators:
            operator.close()
        refused_watches = requests_served(url, "/v1/watch", "429")
    finally:
        fleet.close()
        last_kb = rss.stop()
    return {"processes": processes, "jobs_per_process": jobs, "jobs": total, "rounds": rounds,
            "senders": senders, "waiting_requests": waiting,
            "watches_refused_429": refused_watches,
            "heartbeat_interval_s": heartbeat_interval,
            "heartbeats_idle": {"intervals": idle_intervals, "batch_requests": batches,
                                "single_requests": singles,
                                "per_process_per_interval": round(
                                    batches / processes / idle_intervals, 2)},
            "service_rss_mb": {"largest": round(rss.largest_kb / 1024, 1),
                               "at_end": round(last_kb / 1024, 1)},
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
    idle = fleet.get("heartbeats_idle")
    heartbeats = (f" Idle for {idle['intervals']} heartbeat intervals of "
                  f"{fleet['heartbeat_interval_s']:g} s, the fleet sent "
                  f"{idle['batch_requests']} `POST /v1/heartbeats` "
                  f"({idle['per_process_per_interval']:g} per process and interval) and "
                  f"{idle['single_requests']} single-job heartbeats." if idle else "")
    rss = fleet.get("service_rss_mb")
    memory = (f" The service process's resident memory peaked at {rss['largest']:.0f} MB."
              if rss else "")
    return (f"{fleet['jobs']:,} jobs in {fleet['processes']} worker processes of "
            f"{fleet['jobs_per_process']} jobs, one service process"
            f"{_settings(fleet)}; {int(fleet['waiting_requests'])} waiting requests covered "
            f"them all.{heartbeats} Each round "
            f"sent {fleet['jobs']:,} commands from {fleet['senders']} threads in "
            f"{fleet['command_burst_ms']['median']:.0f} ms (median of the bursts); a job's "
            f"latency is from its own command to its worker process learning it.{memory}\n\n"
            + "\n".join(rows))


def _settings(fleet: dict) -> str:
    service = fleet.get("service")
    if not service:
        return ""
    waiters = service["max_waiters"] or service["threads"] // 2
    return f" (`--threads {service['threads']}`, {waiters} slots for waiting requests)"


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
    parser.add_argument("--threads", type=int, default=48,
                        help="request threads of the service: at least twice the fleet's "
                             "processes, so that each one's watch gets a slot with the default "
                             "--max-waiters, plus headroom (default 48)")
    parser.add_argument("--max-waiters", type=int, default=0,
                        help="the service's --max-waiters (default 0: half the threads)")
    parser.add_argument("--fleet-processes", type=int, default=20)
    parser.add_argument("--fleet-jobs", type=int, default=500, help="jobs per process")
    parser.add_argument("--fleet-heartbeat-interval", type=float, default=5.0,
                        help="seconds between the heartbeats of the fleet's jobs (default 5)")
    parser.add_argument("--fleet-idle-intervals", type=int, default=3,
                        help="heartbeat intervals the fleet idles while its heartbeat "
                             "requests are counted (default 3)")
    parser.add_argument("--fleet-rounds", type=int, default=3)
    parser.add_argument("--fleet-senders", type=int, default=4,
                        help="threads sending the commands of a round")
    parser.add_argument("--fleet-child", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fleet_child:
        return fleet_child(args.fleet_child, args.fleet_jobs, args.fleet_heartbeat_interval)
    load_before = os.getloadavg()[0]
    with BenchRedis() as redis_server, \
            BenchService(redis_server.url, threads=args.threads,
                         max_waiters=args.max_waiters) as service:
        modes = {
            "long-poll": measure(service.base_url, args.long_poll_samples, long_poll=True,
                                 heartbeat_interval=5.0),
            f"heartbeats every {args.heartbeat_interval:g} s": measure(
                service.base_url, args.heartbeat_samples, long_poll=False,
                heartbeat_interval=args.heartbeat_interval),
        }
        fleet = measure_fleet(service.base_url, service.pids(), args.fleet_processes,
                              args.fleet_jobs, args.fleet_rounds, args.fleet_senders,
                              args.fleet_heartbeat_interval, args.fleet_idle_intervals)
        fleet["service"] = {"threads": args.threads, "max_waiters": args.max_waiters}
        redis_version = redis_server.version()
    load_after = os.getloadavg()[0]
    result = {
        "benchmark": "signal_latency",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "store": redis_version,
        "service": {"threads": args.threads, "max_waiters": args.max_waiters, "workers": 1},
        "method": "pause command sent -> worker library learns pause (observed) -> service "
                  "has recorded observed_state=pause (acknowledged); one job, a worker "
                  "thread calling checkpoint() every 1 ms, all on 127.0.0.1",
        "modes": modes,
        "fleet": fleet,
        "markdown": (f"Load average {load_before:.1f} on {os.cpu_count()} CPUs before this "
                     f"run, {load_after:.1f} after it.\n\n" + markdown(modes) + "\n\n"
                     + fleet_markdown(fleet)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "signal_latency.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
