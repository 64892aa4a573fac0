"""The figure of docs/benchmarks.md, drawn from bench/results/endpoints.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def plot(results: dict, path: Path) -> Path:
    """Three panels: throughput as a share of /healthz (with the targets),
    latency median and 99th percentile, and ``--workers`` scaling."""
    endpoints = {k: v for k, v in results.get("endpoints", {}).items() if k != "healthz"}
    labels = [v["label"].replace(" (", "\n(") for v in endpoints.values()]
    figure, (ratio_ax, latency_ax, workers_ax) = plt.subplots(
        1, 3, figsize=(16, 5.5), gridspec_kw={"width_ratios": [3, 3, 1.2]})

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
        workers_ax.bar(counts, [scaling[c][key]["rps"] for c in counts], color="#55a868")
        workers_ax.set_xlabel("processes (--workers)")
        workers_ax.set_ylabel("requests/s")
        workers_ax.set_title(scaling[counts[0]][key]["label"], fontsize=9)
    else:
        workers_ax.set_axis_off()

    machine = results["machine"]
    figure.suptitle(f"Karmchari {machine['commit']}: {machine['cpu']}, {machine['cores']} cores, "
                    f"Python {machine['python']}, {machine['redis']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
