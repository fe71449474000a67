"""Shared helpers for the benchmarks: timing, percentiles, memory, tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def machine() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.node()}: {cpus} CPUs ({model}), {gpu}, "
            f"load avg {load:.1f} at start, Python {platform.python_version()}")


def rss_mb() -> float:
    """Resident memory of this process, MiB (Linux)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(samples_s: Sequence[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000.0, q)) if samples_s else float("nan")


def latencies(fn: Callable[[int], object], n: int, warmup: int = 3,
              budget_s: float = 30.0) -> list[float]:
    """Call fn(i) n times (fewer if budget_s runs out); per-call seconds."""
    for i in range(warmup):
        fn(i)
    out: list[float] = []
    stop = time.perf_counter() + budget_s
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if time.perf_counter() > stop:
            break
    return out


def throughput(fn: Callable[[], int], min_s: float = 3.0, min_calls: int = 2,
               warmup: int = 1) -> float:
    """Items/s of fn (which returns how many items it did), run for about min_s."""
    for _ in range(warmup):
        fn()
    items, calls = 0, 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_s:
        items += fn()
        calls += 1
    return items / (time.perf_counter() - start)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in cells]
    return "\n".join(lines)
