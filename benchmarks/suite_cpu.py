"""``python -m benchmarks.suite_cpu [pytest args]``: the test suite, and whose CPU it spends.

The suite is CPU-bound on two cores, so what decides its time is the CPU seconds of every
process it starts: test processes, servers, CLI runs, the flow runs of a Prefect worker, Dask
workers. A per-test clock cannot see most of them (a server outlives the test that started it),
so this samples every process on the machine twice a second while ``./wd test`` runs and keeps
each one's last CPU reading; processes that live less than half a second are missed. The
result is a table of CPU seconds by kind of process, printed for ``RESULTS.md`` and written to
``benchmarks/.cache/suite-cpu.json`` with every process's command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "benchmarks" / ".cache" / "suite-cpu.json"
SAMPLE_SECONDS = 0.5

# Kind of process, by the first pattern its command line contains (order matters).
KINDS = [
    ("exec(eval(", "test processes (pytest-xdist workers)"),
    ("-m pytest", "pytest's main process"),
    ("database upgrade", "Prefect database migrations"),
    ("--app-dir", "Prefect test APIs (prefect_test_harness)"),
    ("prefect server start", "stack Prefect servers"),
    ("prefect.server.api.server:create_app", "background Prefect APIs"),
    ("workspace_supervisor", "flow runs of the stacks' Prefect workers"),
    ("mlflow models serve", "served models"),
    ("scoring_server", "served models"),
    ("mlflow", "MLflow servers"),
    ("wd_pipeline.cli run", "CLI runs (wd-pipeline run)"),
    ("wd-pipeline run", "CLI runs (wd-pipeline run)"),
    ("spawn_main", "Dask workers"),
    ("dask", "Dask workers"),
    ("prefect worker", "Prefect workers"),
    ("deploy", "deployments applied"),
    ("postgres", "PostgreSQL"),
    ("weed", "SeaweedFS (S3)"),
    ("chrom", "Chromium (UI tests)"),
]


def kind(command: str) -> str:
    return next((name for pattern, name in KINDS if pattern in command), "other")


def sample(seen: dict[tuple[int, float], dict[str, Any]], since: float) -> None:
    """Record the CPU seconds so far of every process started after ``since``."""
    for process in psutil.process_iter(["pid", "cmdline", "name", "cpu_times", "create_time"]):
        info = process.info
        if info["cpu_times"] is None or info["create_time"] < since:
            continue
        key = (info["pid"], info["create_time"])
        record = seen.setdefault(
            key,
            {"command": " ".join(info["cmdline"] or [info["name"] or ""])[:300], "started": info["create_time"]},
        )
        record["cpu"] = info["cpu_times"].user + info["cpu_times"].system
        record["last_seen"] = time.time()


def watch(stop: threading.Event, seen: dict[tuple[int, float], dict[str, Any]], since: float) -> None:
    while not stop.wait(SAMPLE_SECONDS):
        sample(seen, since)


def main() -> int:
    since = time.time() - 1
    seen: dict[tuple[int, float], dict[str, Any]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=watch, args=(stop, seen, since), daemon=True)
    sampler.start()
    started = time.perf_counter()
    code = subprocess.call([str(ROOT / "wd"), "test", *sys.argv[1:]], cwd=ROOT)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    by_kind: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for record in seen.values():
        by_kind[kind(record["command"])] += record["cpu"]
        count[kind(record["command"])] += 1
    total = sum(by_kind.values())
    print(f"\nsuite: {wall:.0f} s wall, {total:.0f} CPU s in {len(seen)} processes (exit {code})\n")
    print("| processes | count | CPU s | share |\n|---|---|---|---|")
    for name, seconds in by_kind.most_common():
        print(f"| {name} | {count[name]} | {seconds:.0f} | {seconds / total:.0%} |")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps({"wall_seconds": wall, "exit": code, "processes": list(seen.values())}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
