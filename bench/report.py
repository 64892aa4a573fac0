"""Writes the results part of docs/benchmarks.md, and the plot, from
bench/results/*.json. The prose around it is written by hand; this module
replaces only the text between the two markers."""

from __future__ import annotations

import json
from pathlib import Path

from bench import RESULTS, ROOT
from bench.plot import plot

DOC = ROOT / "docs" / "benchmarks.md"
PLOT = RESULTS / "benchmarks.png"
BEGIN = "<!-- results: begin (rewritten by python -m bench; edit bench/report.py) -->"
END = "<!-- results: end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """Markdown table: the first ``text_columns`` columns left-aligned, the
    rest (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text_columns else "---:"
                            for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def machine_section(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    return "\n".join([
        f"Run of {m['date']}, commit `{m['commit']}`; the HTTP benchmarks took "
        f"{results['duration_s']} s"
        + (f", the whole command {results['total_duration_s']} s." if "total_duration_s" in results
           else "."),
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['os']}",
        f"- Python {m['python']}, {m['redis']} (unix socket, no persistence), {m['wrk']}",
        "- " + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()),
        f"- Load average (1 min) before the run: {m['load_average_before']:.2f}"
        + (f"; during it: median {m['load_average_during']['median']:.2f}, from "
           f"{m['load_average_during']['min']:.2f} to {m['load_average_during']['max']:.2f} "
           "(the benchmark's own processes account for about 2 to 3 of that)"
           if "load_average_during" in m else
           " (during it the benchmark's own processes load the machine)"),
        f"- `karmchari serve`: 1 process, {s['threads']} threads; wrk: {s['wrk_threads']} "
        f"thread, {s['connections']} connections; {s['runs']} rounds, each against a fresh "
        f"service, of {s['seconds']:g} s per endpoint after a {s['warmup']:g} s warm-up; "
        "medians of the rounds",
    ])


def endpoints_section(results: dict) -> str:
    rows = []
    for summary in results["endpoints"].values():
        rows.append([
            summary["label"], _n(summary["rps"]), f"{summary['rps_ratio']:.2f}",
            f"{summary['p50_ms']:.2f}", f"{summary['p50_ratio']:.2f}",
            f"{summary['p99_ms']:.2f}", f"{summary['p99_ratio']:.2f}",
            f"{summary['service_cpu_us']:.0f}", f"{summary['redis_cpu_us']:.0f}",
            f"{summary['wrk_cpu_us']:.0f}", str(summary["errors"]),
        ])
    return _table(["endpoint", "req/s", "× /healthz", "p50 ms", "× /healthz", "p99 ms",
                   "× /healthz", "CPU µs/req: service", "Redis", "wrk", "errors"], rows)


def targets_section(results: dict, listing: dict | None) -> str:
    rows = []
    for summary in results["endpoints"].values():
        if summary.get("target_ratio"):
            met = summary["rps_ratio"] >= summary["target_ratio"]
            rows.append([f"{summary['label']}: req/s × /healthz",
                         f"≥ {summary['target_ratio']:.2f}", f"{summary['rps_ratio']:.2f}",
                         "met" if met else "**missed**"])
        if summary.get("job_updates_per_s"):
            met = summary["job_updates_per_s"] >= summary["target_job_updates_per_s"]
            rows.append([f"{summary['label']}: job updates/s",
                         f"≥ {_n(summary['target_job_updates_per_s'])}",
                         _n(summary["job_updates_per_s"]), "met" if met else "**missed**"])
    rows += comparison_targets(results)
    for row in listing_target(listing):
        rows.append(row)
    return _table(["target", "wanted", "measured", ""], rows, text_columns=4)


def listing_target(listing: dict | None) -> list[list[str]]:
    """The listing target from bench/results/listing.json, when it is there."""
    if not listing or "p99_ratio_1m_to_1k" not in listing:
        return []
    ratio = listing["p99_ratio_1m_to_1k"]
    return [["listing p99 at 1,000,000 jobs ÷ p99 at 1,000", "≤ 1.5", f"{ratio:.2f}",
             "met" if ratio <= 1.5 else "**missed**"]]


def workers_section(results: dict) -> str:
    rows = []
    base = None
    for count, summaries in sorted(results["workers"].items(), key=lambda kv: int(kv[0])):
        key = next(k for k in summaries if k != "healthz")
        summary = summaries[key]
        base = base or summary["rps"]
        spread = " ".join("+".join(map(str, run["connections_per_process"]))
                          for run in summary["runs"] if run.get("connections_per_process"))
        rows.append([count, summary["label"], _n(summary["rps"]),
                     f"{summary['rps'] / base:.2f}", _n(summaries["healthz"]["rps"]),
                     f"{summary['p50_ms']:.2f}", f"{summary['p99_ms']:.2f}", spread or "-"])
    return _table(["processes", "endpoint", "req/s", "× 1 process", "/healthz req/s",
                   "p50 ms", "p99 ms", "connections per process, by round"], rows,
                  text_columns=2)


def comparison_section(results: dict) -> str:
    comparison = results["comparison"]
    rows = []
    for server in comparison["servers"].values():
        for summary in server["endpoints"].values():
            go_ratio, cpu_ratio = summary.get("go_ratio"), summary.get("go_cpu_ratio")
            if go_ratio is None and "go_update_ratio" in summary:  # in job updates
                go_ratio = summary["go_update_ratio"]
            rows.append([
                server["label"], summary["label"], _n(summary["rps"]),
                "-" if go_ratio is None else f"{go_ratio:.2f}",
                "-" if cpu_ratio is None else f"{cpu_ratio:.2f}",
                f"{summary['rps_ratio']:.2f}" if "rps_ratio" in summary else "-",
                f"{summary['p50_ms']:.2f}", f"{summary['p99_ms']:.2f}",
                f"{summary['service_cpu_us']:.0f}", f"{summary['redis_cpu_us']:.0f}",
                str(summary["errors"]),
            ])
    intro = (f"Redis: {comparison['redis_url']}, the same server for all. "
             "Ratios are medians over the rounds of the ratio within a round. "
             "CPU µs/req: CPU time (user + system) of all the server's processes, and of "
             "Redis, divided by the requests served. × Go by CPU: the CPU a Go request "
             "costs (server, Redis and wrk) over what this server's costs: the share of "
             "Go's throughput to expect where the machine's cores are the only limit, "
             "which other work on a shared machine moves far less than req/s.")
    intro += (" For the batch heartbeats, × Go is job updates per second over the Go "
              "service's POST /jobState per second (its only update).")
    if not comparison["go"]:
        intro += (" The Go service was not in this run (`--go-binary`): ratios are to "
                  "`/healthz` of the same server only.")
    return intro + "\n\n" + _table(
        ["server", "endpoint", "req/s", "× Go", "× Go by CPU", "× /healthz", "p50 ms", "p99 ms",
         "CPU µs/req: server", "Redis", "errors"], rows, text_columns=2)


def comparison_targets(results: dict) -> list[list[str]]:
    comparison = results.get("comparison")
    if not comparison or not comparison["go"]:
        return []
    rows = []
    for server in comparison["servers"].values():
        for summary in server["endpoints"].values():
            target = summary.get("target_go_ratio")
            for key, what in (("go_ratio", "req/s × Go"),
                              ("go_update_ratio", "job updates/s × Go's updates/s")):
                if target and key in summary:
                    met = summary[key] >= target
                    rows.append([f"{summary['label']}, {server['label']}: {what}",
                                 f"≥ {target:.2f}", f"{summary[key]:.2f}",
                                 "met" if met else "**missed**"])
    return rows


def round_trips_section(results: dict) -> str:
    rows = [[r["label"], f"{r['commands_per_request']:g}",
             ", ".join(f"{k} {v // r['requests']}" for k, v in r["by_command"].items()),
             r["note"]] for r in results["round_trips"]]
    return _table(["request", "commands sent", "which", "note"], rows, text_columns=4)


def profile_section(results: dict) -> str:
    profile = results.get("profile")
    if not profile:
        return ""
    categories = sorted({c for p in profile.values() for c in p["categories"]})
    rows = [[p["label"], *(f"{p['categories'].get(c, 0):.0f}%" for c in categories)]
            for p in profile.values()]
    return _table(["endpoint", *categories], rows)


def results_markdown(results: dict, listing: dict | None, signal: dict | None) -> str:
    parts = ["### Machine and run", machine_section(results)]
    if "endpoints" in results:
        parts += ["### Targets", targets_section(results, listing),
                  "### Endpoints",
                  "Requests per second, latency, and each as a ratio to `GET /healthz` of the "
                  "same server in the same round. CPU columns: CPU time (user + system) of "
                  "the service process, of Redis and of wrk during a run, divided by the "
                  "requests served.",
                  endpoints_section(results),
                  f"![Benchmark results]({Path('..') / PLOT.relative_to(ROOT)})"]
    if "comparison" in results:
        parts += ["### Against the Go service, and under Granian", comparison_section(results)]
    if "workers" in results:
        parts += ["### `--workers` scaling", workers_section(results)]
    if "round_trips" in results:
        parts += ["### Redis commands per request (MONITOR)", round_trips_section(results)]
    if results.get("profile"):
        parts += ["### Where the service's time goes (py-spy, share of GIL-holding samples)",
                  profile_section(results)]
    if listing:
        parts += ["### Listing and memory (bench/listing.py)", companion_section(listing)]
    if signal:
        parts += ["### Signal latency (bench/signal_latency.py)", companion_section(signal)]
    if "endpoints" in results:
        parts += ["### Closing note", closing_note(results, listing, signal)]
    return "\n\n".join(parts)


def _against(measured: float, target: float, at_least: bool = True, shown=None) -> str:
    """"met", or how far short of the target."""
    shown = shown or (lambda value: f"{value:.2f}")
    if (measured >= target) if at_least else (measured <= target):
        return f"target {shown(target)}: met"
    gap = abs(target - measured)
    return f"target {shown(target)}: missed by {shown(gap)}, {100 * gap / target:.0f} %"


def closing_note(results: dict, listing: dict | None, signal: dict | None) -> str:
    """The run's figures against the targets, in a few sentences."""
    endpoints = results["endpoints"]
    machine = results["machine"]
    during = (f", median {machine['load_average_during']['median']:.2f} during it"
              if "load_average_during" in machine else "")
    sentences = [f"In this run (load average {machine['load_average_before']:.2f} before it"
                 f"{during}), `/healthz` served {_n(endpoints['healthz']['rps'])} req/s."]
    ratios = [f"{s['label']} {s['rps_ratio']:.2f} ({_against(s['rps_ratio'], s['target_ratio'])})"
              for s in endpoints.values() if s.get("target_ratio")]
    sentences.append("As shares of it: " + "; ".join(ratios) + ".")
    for summary in endpoints.values():
        if summary.get("job_updates_per_s"):
            updates = summary["job_updates_per_s"]
            verdict = _against(updates, summary["target_job_updates_per_s"], shown=_n)
            sentences.append(f"{summary['label']} recorded {_n(updates)} job updates/s "
                             f"({verdict}).")
    if listing and "p99_ratio_1m_to_1k" in listing:
        largest = listing["sizes"][-1]
        sentences.append(
            f"Listing p99 at 1,000,000 jobs was {listing['p99_ratio_1m_to_1k']:.2f} times the p99 "
            f"at 1,000 ({_against(listing['p99_ratio_1m_to_1k'], 1.5, at_least=False)}), and "
            f"Redis held {_n(largest['memory_per_job_bytes'])} bytes per job at "
            f"{_n(largest['jobs'])} jobs.")
    comparison = results.get("comparison")
    if comparison and comparison["go"]:
        for server in comparison["servers"].values():
            if server["is_go"]:
                continue
            shares = [f"{s['label']} {s['go_ratio']:.2f}"
                      + (f" ({_against(s['go_ratio'], s['target_go_ratio'])})"
                         if s.get("target_go_ratio") else "")
                      + (f", {s['go_cpu_ratio']:.2f} by CPU per request"
                         if "go_cpu_ratio" in s else "")
                      for s in server["endpoints"].values() if "go_ratio" in s]
            shares += [f"{s['label']} {s['go_update_ratio']:.2f} × Go's updates per second"
                       + (f" ({_against(s['go_update_ratio'], s['target_go_ratio'])})"
                          if s.get("target_go_ratio") else "")
                       for s in server["endpoints"].values() if "go_update_ratio" in s]
            sentences.append(f"{server['label']}, as shares of the Go service: "
                             + "; ".join(shares) + ".")
    if "workers" in results:
        one, two = (next(v for k, v in results["workers"][n].items() if k != "healthz")
                    for n in ("1", "2"))
        sentences.append(f"Two processes served {one['label']} {two['rps'] / one['rps']:.2f} "
                         "times as fast as one.")
    long_poll = (signal or {}).get("modes", {}).get("long-poll", {}).get("observed")
    if long_poll:
        sentences.append("A pause reached a long-polling worker in "
                         f"{long_poll['median_ms']:.1f} ms (median; p99 "
                         f"{long_poll['p99_ms']:.1f} ms).")
    fleet = (signal or {}).get("fleet")
    if fleet:
        pause = fleet["pause"]
        sentences.append(
            f"Pausing {_n(fleet['jobs'])} jobs in {fleet['processes']} worker processes, "
            f"each reached its worker in {pause['median_ms']:.1f} ms (median; p99 "
            f"{pause['p99_ms']:.1f} ms, "
            f"{_against(pause['p99_ms'], 100, at_least=False, shown=lambda v: f'{v:.0f} ms')}).")
        rss = fleet.get("service_rss_mb")
        if rss:
            sentences.append(
                f"The service process peaked at {rss['largest']:.0f} MB resident ("
                f"{_against(rss['largest'], 80, at_least=False, shown=lambda v: f'{v:.0f} MB')}).")
        idle = fleet.get("heartbeats_idle")
        if idle:
            sentences.append(f"A worker process of {fleet['jobs_per_process']} jobs sent "
                             f"{idle['per_process_per_interval']:g} heartbeat requests per "
                             "interval (target: one).")
    return " ".join(sentences)


def companion_section(data: dict) -> str:
    """A companion benchmark's own summary table, when it gives one."""
    return data.get("markdown") or "```json\n" + json.dumps(data, indent=2)[:3000] + "\n```"


def write_report() -> list[Path]:
    results = _load("endpoints")
    if results is None:
        return []
    listing = _load("listing")
    written = []
    if "endpoints" in results or "comparison" in results:
        written.append(plot(results, PLOT, listing))
    section = results_markdown(results, listing, _load("signal_latency"))
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = f"{head}{BEGIN}\n{section}\n{END}{tail}"
    else:
        text += f"\n{BEGIN}\n{section}\n{END}\n"
    DOC.write_text(text)
    written.append(DOC)
    return written
