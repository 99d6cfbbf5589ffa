"""Timing helpers for the chapters' "measured comparison" cells.

Medians of repeated runs, with a warm-up first and the GPU synchronised around
each run. The chapters time on whatever device they find and say which; the
numbers quoted in the book's prose come from ``benchmarks/`` instead.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["median_time", "time_vs_size"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 2.0) -> float:
    """Median wall time of ``fn()`` in seconds.

    Stops early once ``budget_s`` seconds have been spent (after at least one
    timed run), so that a slow naive loop cannot stall a notebook.
    """
    for _ in range(warmup):
        fn()
    _sync()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def time_vs_size(fns: dict[str, Callable], make_inputs: Callable, sizes, limits: dict[str, int] | None = None, **kw):
    """Time each ``fns[name](*make_inputs(size))`` for every size.

    ``limits`` caps the size per implementation (a naive loop is only timed up
    to its limit; larger sizes record ``nan``). Returns ``{name: [seconds]}``.
    """
    limits = limits or {}
    results: dict[str, list[float]] = {name: [] for name in fns}
    for size in sizes:
        args = make_inputs(size)
        for name, fn in fns.items():
            if size > limits.get(name, float("inf")):
                results[name].append(float("nan"))
            else:
                results[name].append(median_time(lambda: fn(*args), **kw))
    return results
