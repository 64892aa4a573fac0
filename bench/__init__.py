"""Karmchari's benchmark suite: ``python -m bench`` (see docs/benchmarks.md).

Every measurement runs against a Redis and a ``karmchari serve`` that the
suite starts itself on loopback (``bench.servers``); load comes from ``wrk``.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
