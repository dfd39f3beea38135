"""Where a pipeline run's wall time goes: named stopwatches around its steps.

Issue #5 asks that orchestration and tracking cost at most 10 % of a run on 1M rows, and
that the run's breakdown (start-up, ingest, training, evaluation, registration, tracking)
be reported so it can be cut. Guessing that from log timestamps mixes steps up, so the
library and the flows time their own steps here, and ``flows/pipeline.py`` logs the totals
as ``time_*`` metrics on the parent run (``benchmarks/`` reads them).

Totals are process-wide and thread-safe: tasks in a thread pool add to the same totals.
Tasks on Dask workers count in their own processes and are missing from the parent's totals.
Training is kept as intervals, not a sum: two chunks training at once on two threads share
the cores, so the wall time spent training is the union of the intervals.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

TRAINING = "training"

_lock = threading.Lock()
_totals: dict[str, float] = defaultdict(float)
_intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)


def reset() -> None:
    """Forget everything measured so far (a pipeline run starts from zero)."""
    with _lock:
        _totals.clear()
        _intervals.clear()


def add(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] += seconds


@contextmanager
def measure(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``name``, also when it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - started)


@contextmanager
def interval(name: str) -> Iterator[None]:
    """Record the ``with`` block as an interval of ``name`` (see :func:`union_seconds`)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        with _lock:
            _intervals[name].append((started, time.perf_counter()))


def union_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` spans: overlapping time counts once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def snapshot() -> dict[str, float]:
    """Seconds per name: sums for :func:`measure`, unions for :func:`interval`."""
    with _lock:
        totals = {TRAINING: 0.0, **_totals}
        totals.update({name: union_seconds(spans) for name, spans in _intervals.items()})
    return totals
