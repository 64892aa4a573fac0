"""The figure of docs/benchmarks.md, drawn from bench/results/endpoints.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def plot(results: dict, path: Path, listing: dict | None = None) -> Path:
    """Six panels: throughput as a share of /healthz (with the targets),
    latency median and 99th percentile, ``--workers`` scaling, listing
    latency by the number of jobs stored (bench/results/listing.json), and
    the comparison with the Go service: requests per second and CPU per
    request of each server."""
    endpoints = {k: v for k, v in results.get("endpoints", {}).items() if k != "healthz"}
    labels = [v["label"].replace(" (", "\n(") for v in endpoints.values()]
    figure, ((ratio_ax, latency_ax), (workers_ax, listing_ax), (versus_ax, cpu_ax)) = \
        plt.subplots(3, 2, figsize=(14, 16))

    positions = range(len(endpoints))
    ratio_ax.bar(positions, [v["rps_ratio"] for v in endpoints.values()], color="#4c72b0")
    for x, summary in zip(positions, endpoints.values(), strict=True):
        if summary.get("target_ratio"):
            ratio_ax.hlines(summary["target_ratio"], x - 0.4, x + 0.4, colors="#c44e52",
                            linewidth=2, label="target")
    ratio_ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=8)
    ratio_ax.set_ylabel("requests/s as a share of /healthz (same run)")
    ratio_ax.set_title("Throughput relative to /healthz")
    handles, names = ratio_ax.get_legend_handles_labels()
    if handles:
        ratio_ax.legend(handles[:1], names[:1])

    width = 0.4
    latency_ax.bar([x - width / 2 for x in positions],
                   [v["p50_ms"] for v in endpoints.values()], width, label="median")
    latency_ax.bar([x + width / 2 for x in positions],
                   [v["p99_ms"] for v in endpoints.values()], width, label="99th percentile")
    latency_ax.set_yscale("log")
    latency_ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=8)
    latency_ax.set_ylabel("ms (log scale)")
    latency_ax.set_title(f"Latency, {results['settings']['connections']} connections")
    latency_ax.legend()

    scaling = results.get("workers", {})
    if scaling:
        counts = sorted(scaling, key=int)
        key = next(k for k in scaling[counts[0]] if k != "healthz")
        for offset, (shown, name) in zip((-width / 2, width / 2),
                                         (("healthz", "GET /healthz"),
                                          (key, scaling[counts[0]][key]["label"])), strict=True):
            workers_ax.bar([i + offset for i in range(len(counts))],
                           [scaling[c][shown]["rps"] for c in counts], width, label=name)
        workers_ax.set_xticks(range(len(counts)), counts)
        workers_ax.set_xlabel("processes (--workers)")
        workers_ax.set_ylabel("requests/s")
        workers_ax.set_title("--workers scaling")
        workers_ax.legend()
    else:
        workers_ax.set_axis_off()

    if listing and listing.get("sizes"):
        jobs = [size["jobs"] for size in listing["sizes"]]
        for query in listing["sizes"][0]["queries"]:
            listing_ax.plot(jobs, [size["queries"][query]["p99_ms"] for size in listing["sizes"]],
                            marker="o", label=f"{query}, p99")
        listing_ax.set_xscale("log")
        listing_ax.set_ylim(bottom=0)
        listing_ax.set_xlabel("jobs stored")
        listing_ax.set_ylabel("ms")
        listing_ax.set_title("GET /v1/jobs (50 per page), 99th percentile")
        listing_ax.legend(fontsize=8)
    else:
        listing_ax.set_axis_off()

    comparison_panels(results.get("comparison"), versus_ax, cpu_ax)

    machine = results["machine"]
    figure.suptitle(f"Karmchari {machine['commit']}: {machine['cpu']}, {machine['cores']} cores, "
                    f"Python {machine['python']}, {machine['redis']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison_panels(comparison: dict | None, rps_ax, cpu_ax) -> None:
    """Grouped bars, one group per endpoint of the old API, one bar per server."""
    if not comparison:
        rps_ax.set_axis_off()
        cpu_ax.set_axis_off()
        return
    servers = list(comparison["servers"].values())
    ours = next(s for s in servers if not s["is_go"])
    keys = [k for k in ours["endpoints"] if k != "healthz"]
    width = 0.8 / len(servers)
    for index, server in enumerate(servers):
        offsets = [x - 0.4 + width * (index + 0.5) for x in range(len(keys))]
        measured = [server["endpoints"].get(k, {}) for k in keys]  # Go has no batch endpoint
        rps_ax.bar(offsets, [m.get("rps", 0) for m in measured], width, label=server["label"])
        cpu_ax.bar(offsets, [m.get("service_cpu_us", 0) for m in measured], width,
                   label=server["label"])
    names = [ours["endpoints"][k]["label"] for k in keys]
    go = next((s for s in servers if s["is_go"]), None)
    if go is not None:
        shown = False
        for x, key in enumerate(keys):
            target = ours["endpoints"][key].get("target_go_ratio")
            if not target or key not in go["endpoints"]:
                continue
            rps_ax.hlines(go["endpoints"][key]["rps"] * target, x - 0.4, x + 0.4,
                          colors="#c44e52", linewidth=2,
                          label=f"target for {ours['label']}" if not shown else None)
            shown = True
    for ax, title, unit in ((rps_ax, "Old API against the Go service", "requests/s"),
                            (cpu_ax, "Server CPU per request", "µs of CPU per request")):
        ax.set_xticks(range(len(keys)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
