"""Ten times the rows: the pipeline and ``score`` on a 1M-row and a 10M-row synthetic table, per row.

``python -m benchmarks.scale [--rows 1000000,10000000] [--epochs 2]`` writes each table with the
generator of the 1M-row benchmark (``synthetic()`` in ``benchmarks/__main__.py``, 30 float32
features and a 0/1 label) into a temporary folder, removed afterwards, then for each size:

- ``wd-pipeline run --folds 1`` (default grid, ``--epochs`` epochs, no early stopping),
  through ``pipeline_breakdown`` as the other pipeline rows of the benchmark;
- ``wd-pipeline score`` of the same file with the champion that run registered.

Each runs under its own measuring process, so its peak RSS is its own: the largest
``ru_maxrss`` among the processes it started and waited for (``RUSAGE_CHILDREN``), with their
CPU seconds. Results go under ``"scale"`` in ``benchmarks/results.json``; a markdown section
for ``benchmarks/RESULTS.md`` is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.__main__ import (
    CACHE,
    ROOT,
    pipeline_breakdown,
    pipeline_env,
    result_of,
    stop_background_api,
    synthetic,
)

# Per-row time and peak RSS at 10M rows may be at most this many times those at 1M.
TARGET = 1.5
PIPELINE = ["--label", "y", "--positive-class", "", "--folds", "1", "--patience", "0"]


def measured(kind: str, **args: Any) -> dict[str, Any]:
    """Run ``kind`` (pipeline or score) in a fresh measuring process; its result with the peak RSS."""
    return result_of(["benchmarks.scale", "--one", kind, json.dumps(args)], kind)


def children() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def one_pipeline(data: str, rows: int, epochs: int) -> dict[str, Any]:
    """The pipeline on ``data``; its work folder and MLflow store stay for the scoring that follows."""
    arguments = [*PIPELINE, "--epochs", str(epochs)]
    result = pipeline_breakdown(f"scale-{rows}", arguments, Path(data), keep_api=True)  # score runs next
    return {**result, **children()}


def one_score(data: str, rows: int) -> dict[str, Any]:
    """``wd-pipeline score`` of the table with the champion the pipeline run registered."""
    work = CACHE / f"pipeline-scale-{rows}"
    env = pipeline_env(work)
    output = work / "scored.parquet"
    command = [sys.executable, "-m", "wd_pipeline.cli", "score", "--data", data, "--output", str(output)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"score failed:\n{done.stderr[-3000:]}")
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(output).metadata
    result = {"wall_seconds": wall, "rows": metadata.num_rows, "row_groups": metadata.num_row_groups}
    output.unlink()
    return {**result, **children()}


def run(sizes: list[int], epochs: int) -> dict[str, Any]:
    CACHE.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="scale-", dir=CACHE))  # under the data root the pipeline runs allow
    rows_out = []
    try:
        for rows in sizes:
            data = str(synthetic(rows, folder=folder))
            print(
                f"{rows:,} rows: {Path(data).stat().st_size / 2**20:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True
            )
            pipeline = measured("pipeline", data=data, rows=rows, epochs=epochs)
            print(
                f"  pipeline {pipeline['wall_seconds']:.1f} s, peak RSS {pipeline['peak_rss_mib']:.0f} MiB", flush=True
            )
            scored = measured("score", data=data, rows=rows)
            print(f"  score {scored['wall_seconds']:.1f} s, peak RSS {scored['peak_rss_mib']:.0f} MiB", flush=True)
            rows_out.append(
                {"rows": rows, "file_mib": Path(data).stat().st_size / 2**20, "pipeline": pipeline, "score": scored}
            )
            save({"epochs": epochs, "command": " ".join(PIPELINE), "sizes": rows_out, "target": TARGET})
            Path(data).unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for rows in sizes:
            if (CACHE / f"pipeline-scale-{rows}").is_dir():
                stop_background_api(CACHE / f"pipeline-scale-{rows}")
            shutil.rmtree(CACHE / f"pipeline-scale-{rows}", ignore_errors=True)
    return {"epochs": epochs, "command": " ".join(PIPELINE), "sizes": rows_out, "target": TARGET}


def per_row(entry: dict[str, Any], part: str, key: str) -> float:
    return entry[part][key] / entry["rows"]


def markdown(scale: dict[str, Any]) -> str:
    small, large = scale["sizes"][0], scale["sizes"][-1]
    factor = large["rows"] / small["rows"]
    lines = [
        "| measurement | " + " | ".join(f"{entry['rows']:,} rows" for entry in scale["sizes"]) + " | ratio per row |",
        "|---|" + "---|" * len(scale["sizes"]) + "---|",
    ]

    def row(label: str, part: str, key: str, unit: float = 1.0, digits: int = 1) -> None:
        values = [entry[part][key] for entry in scale["sizes"]]
        ratio = per_row(large, part, key) / per_row(small, part, key)
        lines.append(
            f"| {label} | " + " | ".join(f"{value / unit:,.{digits}f}" for value in values) + f" | ×{ratio:.2f} |"
        )

    row("pipeline wall s", "pipeline", "wall_seconds")
    row("pipeline s inside the flow", "pipeline", "flow_seconds")
    row("pipeline training s", "pipeline", "training_seconds")
    row("pipeline CPU s (all processes)", "pipeline", "cpu_seconds")
    row("pipeline peak RSS MiB (largest process)", "pipeline", "peak_rss_mib", digits=0)
    row("score wall s", "score", "wall_seconds")
    row("score CPU s", "score", "cpu_seconds")
    row("score peak RSS MiB", "score", "peak_rss_mib", digits=0)
    lines.append(
        "| score output row groups | "
        + " | ".join(str(entry["score"]["row_groups"]) for entry in scale["sizes"])
        + " | |"
    )
    lines += [
        "",
        f"Ratio per row = (value at {large['rows']:,} / {large['rows']:,}) / (value at {small['rows']:,} / "
        f"{small['rows']:,}); the rows grow ×{factor:.0f}. Pipeline: `wd-pipeline run {scale['command']} "
        f"--epochs {scale['epochs']}`. Target: ≤ ×{scale['target']} for pipeline wall time and peak RSS per row.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated table sizes, smallest first")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, raw = args.one[0], json.loads(args.one[1])
        result = one_pipeline(**raw) if kind == "pipeline" else one_score(**raw)
        print("RESULT " + json.dumps(result))
        return
    scale = run([int(size) for size in args.rows.split(",")], args.epochs)
    print(markdown(scale))


def save(scale: dict[str, Any]) -> None:
    """Under ``"scale"`` in ``benchmarks/results.json``, after every size: a larger one that fails keeps the others."""
    saved = ROOT / "benchmarks" / "results.json"
    report = json.loads(saved.read_text()) if saved.exists() else {}
    report["scale"] = scale
    saved.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
