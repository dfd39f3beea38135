"""Where the pipeline's memory peaks: its resident set over time, beside its own log lines.

``python -m benchmarks.memory_trace --rows 1000000 [--epochs 2]`` writes the scale benchmark's
synthetic table (``synthetic()``), runs ``wd-pipeline run`` on it with the scale benchmark's
settings (``benchmarks/scale.py``) and samples the resident set of the pipeline process (psutil, every ``--every`` seconds). It prints each log line with the RSS when
it appeared, and, for every new high of at least ``--step`` MiB, the log line the run was
last at: enough to tell which step holds the memory. The run's peak is also read back as the
kernel's ``ru_maxrss`` of the waited-for children.

The pipeline itself runs under ``--inside``: the CLI, with every named step of
``wd_pipeline.timing`` (``measure`` and ``interval``) wrapped so that it prints, when the
step ends, the RSS at its start, the highest RSS sampled during it (every 10 ms) and the RSS
at its end. Steps nest (a phase holds its units), so a step's high includes its inner steps'.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

from benchmarks.__main__ import CACHE, pipeline_env, synthetic
from benchmarks.scale import PIPELINE


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StepPeaks:
    """Highest RSS of the process while each open step runs, sampled by one thread."""

    def __init__(self, every: float = 0.01) -> None:
        self.lock = threading.Lock()
        self.open: dict[int, list[int]] = {}
        self.counter = 0
        threading.Thread(target=self._sample, args=(every,), daemon=True).start()

    def _sample(self, every: float) -> None:
        while True:
            rss = current_rss()
            with self.lock:
                for high in self.open.values():
                    high[0] = max(high[0], rss)
            time.sleep(every)

    def wrap(self, original: Any) -> Any:
        @contextlib.contextmanager
        def wrapped(name: str) -> Iterator[None]:
            start = current_rss()
            with self.lock:
                self.counter += 1
                token = self.counter
                self.open[token] = [start]
            try:
                with original(name):
                    yield
            finally:
                end = current_rss()
                with self.lock:
                    high = max(self.open.pop(token)[0], end)
                mib = 2**20
                print(
                    f"STEP {name}: start {start / mib:.0f} MiB, high {high / mib:.0f} MiB (+{(high - start) / mib:.0f}),"
                    f" end {end / mib:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )

        return wrapped


def inside(argv: list[str]) -> int:
    """The CLI with every timed step reporting its memory (see the module's docstring)."""
    from wd_pipeline import cli, timing

    peaks = StepPeaks()
    timing.measure = peaks.wrap(timing.measure)
    timing.interval = peaks.wrap(timing.interval)
    return cli.main(argv)


def trace(rows: int, epochs: int, every: float, step_mib: float) -> None:
    data = synthetic(rows)
    work = CACHE / f"memory-trace-{rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = pipeline_env(work)
    command = [sys.executable, "-m", "benchmarks.memory_trace", "--inside", "run", "--data", str(data), *PIPELINE]
    command += ["--epochs", str(epochs), "--experiment", f"trace-{rows}"]
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = psutil.Process(child.pid)
    last_line, high, reported = "(start)", 0, 0
    while child.poll() is None:
        try:
            own = process.memory_info().rss
        except psutil.Error:
            break
        while not lines.empty():
            last_line = lines.get()
            print(f"{time.perf_counter() - started:7.1f} s {own / 2**20:7.0f} MiB | {last_line[:160]}", flush=True)
        if own > high:
            high = own
            if (high - reported) / 2**20 >= step_mib:
                reported = high
                print(
                    f"{time.perf_counter() - started:7.1f} s {high / 2**20:7.0f} MiB ** new high, after: {last_line[:120]}",
                    flush=True,
                )
        time.sleep(every)
    reader.join(timeout=5)
    while not lines.empty():
        print(f"{time.perf_counter() - started:7.1f} s         | {lines.get()[:160]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"exit {child.returncode}; wall {time.perf_counter() - started:.1f} s; sampled high {high / 2**20:.0f} MiB")
    print(f"peak RSS (ru_maxrss of the pipeline process): {peak:.0f} MiB = {peak * 1024 / rows:.3f} KiB/row")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--inside"]:
        sys.exit(inside(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_trace", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between RSS samples")
    parser.add_argument("--step", type=float, default=50.0, help="report a new high after this many MiB more")
    args = parser.parse_args()
    trace(args.rows, args.epochs, args.every, args.step)


if __name__ == "__main__":
    main()
