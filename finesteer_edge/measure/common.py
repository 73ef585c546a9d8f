"""Measurement plumbing shared by ``finesteer-edge bench`` and the ``bench/`` scripts.

Benchmarks here run on shared, noisy machines (2 cores, other jobs). Three rules follow from that and
live in this module so every benchmark obeys them the same way:

- A/B variants are **interleaved**: each round runs every variant once, in a rotated order, so a burst
  of load from a neighbour hits all variants alike instead of one of them.
- We quote **medians** (and the spread) and compute **ratios from the same run**, never across runs.
- Every result records its **environment** (threads, load average before and after, versions, CPU), so a
  number can be judged later; the load average says whether the machine was quiet.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def median(xs: Sequence[float]) -> float:
    """Median, or NaN for an empty sample (a missing variant must not crash a report)."""
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: Sequence[float]) -> tuple[float, float]:
    """(min, max) of a sample: with few repeats this says more about noise than a stdev would."""
    return (float(min(xs)), float(max(xs))) if xs else (float("nan"), float("nan"))


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or missing (e.g. no tokens were generated)."""
    return float(a / b) if b and b == b else float("nan")


def interleaved(runners: Mapping[str, Callable[[], T]], rounds: int, *, warmup: int = 1) -> dict[str, list[T]]:
    """Run every runner once per round, rotating the order each round; drop the warm-up rounds.

    Rotation (rather than a fixed order) removes position effects, e.g. the first variant of a round
    always paying for a cold cache left by the previous round's last variant.
    """
    names = list(runners)
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            value = runners[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def time_call(fn: Callable[[], object], *, min_iters: int = 20, max_iters: int = 1000,
              budget_s: float = 2.0) -> list[float]:
    """Wall times (seconds) of repeated calls of ``fn``: at least ``min_iters``, then until the budget."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (NaNs where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - non-Unix
        return [float("nan")] * 3


def rss_bytes() -> dict[str, int]:
    """Current and peak resident set size of this process, from /proc (Linux), in bytes."""
    out = {"rss": 0, "peak_rss": 0}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    out["peak_rss"] = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        import resource

        out["peak_rss"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Versions of everything whose speed we measure (imported lazily: torch is never imported here)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("finesteer-edge", "llama_cpp_python", "onnxruntime", "numpy", "onnx", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment(**extra: Any) -> dict[str, Any]:
    """What a benchmark result must carry so it can be judged later."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_start": loadavg(),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "versions": versions(),
        "argv": sys.argv,
        **extra,
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed by the caller (they know the right precision)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned table for terminals."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in cells)
