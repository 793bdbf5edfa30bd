"""Timing helpers shared by the benchmark scripts: medians of repeated runs."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def paired_ratio(fn: Callable[[], Any], ref: Callable[[], Any], repeats: int = 7, warmup: int = 1,
                 inner: int = 3) -> tuple[float, float]:
    """Median of ``time(fn) / time(ref)`` over pairs run back to back, and the median time of ``fn``.

    On a shared machine the load changes from second to second; a ratio of two
    medians taken minutes apart mixes two loads.  Each pair here times ``ref``
    and ``fn`` (``inner`` calls each, interleaved) within a fraction of a second.
    """
    for _ in range(warmup):
        ref()
        fn()
    ratios, times = [], []
    for _ in range(repeats):
        t_ref = t_fn = 0.0
        for _ in range(inner):
            start = time.perf_counter()
            ref()
            t_ref += time.perf_counter() - start
            start = time.perf_counter()
            fn()
            t_fn += time.perf_counter() - start
        ratios.append(t_fn / t_ref)
        times.append(t_fn / inner)
    return statistics.median(ratios), statistics.median(times)
