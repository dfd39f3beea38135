"""``python -m benchmarks``: grid training against the one-fit-per-λ baseline, and the rest.

Every workload runs in its own process (``benchmarks/workloads.py``) so each peak RSS is its
own; ratios compare runs made by this same command on this same machine. Results go to
``benchmarks/results.json`` and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
FULL_GRID = [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 2e-5, 2e-4, 2e-3, 2e-2]
# Seed noise: both sides train the same model, but Keras' fit shuffles its own way. On the
# 114-row validation split one row is 0.9 %, so 3 rows; on 200,000 rows, 1 %.
TOLERANCE = {"bundled": 0.03, "synthetic": 0.01}


def grid_of(size: int) -> list[float]:
    return sorted(FULL_GRID[:size])


def synthetic(rows: int, features: int = 30, folder: Path = CACHE) -> Path:
    """A seeded logistic-model dataset, written once as Parquet (into ``folder``)."""

    path = folder / f"synthetic_{rows}x{features}.parquet"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, features)).astype(np.float32) * rng.uniform(0.5, 20, size=features).astype(np.float32)
    weights = rng.normal(size=features) / np.abs(x).mean(axis=0)
    logits = x @ weights + 0.5 * np.sin(x[:, 0]) - 0.2
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logits))).astype(np.int8)
    frame = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(features)]).assign(y=label)
    frame.to_parquet(path, index=False)
    return path


CATEGORY_SIZES = (3, 5, 8, 12, 20, 50, 100, 200, 500, 1000)


def synthetic_categorical(rows: int, numeric: int = 20) -> Path:
    """A seeded table of ``numeric`` float columns and 10 text columns (3 to 1000 categories), some cells
    missing (5 % in half of each kind), the label depending on both kinds; written once as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = CACHE / f"synthetic_categorical_{rows}x{numeric}+{len(CATEGORY_SIZES)}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, numeric)) * rng.uniform(0.5, 20, size=numeric)
    logits = x @ (rng.normal(size=numeric) / np.abs(x).mean(axis=0)) - 0.2
    columns: dict[str, pa.Array] = {}
    for i in range(numeric):
        missing = rng.uniform(size=rows) < 0.05 if i % 2 else None
        columns[f"x{i:02d}"] = pa.array(x[:, i], mask=missing)
    for j, size in enumerate(CATEGORY_SIZES):
        codes = rng.zipf(1.5, rows) % size
        logits += rng.normal(scale=0.5, size=size)[codes]
        words = pa.DictionaryArray.from_arrays(codes.astype(np.int32), [f"k{j}-{v}" for v in range(size)])
        text = words.cast(pa.string())
        if j % 2:
            text = pa.array(text.to_numpy(zero_copy_only=False), mask=rng.uniform(size=rows) < 0.05)
        columns[f"c{j}"] = text
    columns["y"] = pa.array((rng.uniform(size=rows) < 1 / (1 + np.exp(-logits))).astype(np.int8))
    pq.write_table(pa.table(columns), path)
    return path


def run_workload(name: str, **args: Any) -> dict[str, Any]:
    return result_of(["benchmarks.workloads", name, json.dumps(args)], f"workload {name}", quiet_tensorflow=True)


def result_of(module_args: list[str], what: str, *, quiet_tensorflow: bool = False) -> dict[str, Any]:
    """Run ``python -m <module_args>`` in a fresh process (its own peak RSS) and read its last ``RESULT`` line."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"} if quiet_tensorflow else None
    done = subprocess.run(
        [sys.executable, "-m", *module_args], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def ingest_comparison(path: Path, repeats: int = 3) -> dict[str, Any]:
    """The pipeline's ingest of ``path`` against the bare pyarrow round trips (see ``workloads.ingest``)."""
    result = run_workload("ingest", source=str(path), label="y", work=str(CACHE / "ingest"), repeats=repeats)
    result["ratio"] = result["ingest_seconds"] / result["bare_seconds"]
    result["ratio_arrow"] = result["ingest_seconds"] / result["bare_arrow_seconds"]
    result["cpu_ratio_arrow"] = result["ingest_cpu_seconds"] / result["bare_arrow_cpu_seconds"]
    result["source"] = path.name
    print(
        f"ingest {path.name}: {result['ingest_seconds']:.2f} s; bare Arrow ×{result['ratio_arrow']:.2f}, "
        f"bare with pandas ×{result['ratio']:.2f}; CPU seconds against bare Arrow ×{result['cpu_ratio_arrow']:.2f}",
        flush=True,
    )
    return result


def grid_comparison(
    label: str, source: dict[str, Any], sizes: list[int], epochs: int, baseline_points: int
) -> list[dict]:
    """Packed vs baseline for each grid size; the baseline trains at most ``baseline_points`` λ."""
    rows = []
    for size in sizes:
        lams = grid_of(size)
        fast = run_workload("packed", **source, lams=lams, epochs=epochs, batch_size=32)
        measured = lams[: min(size, baseline_points)]
        slow = run_workload("baseline", **source, lams=measured, epochs=epochs, batch_size=32)
        per_point = slow["seconds"] / len(measured)
        baseline_seconds = per_point * size
        examples = fast["train_rows"] * epochs * size
        gaps = [abs(a - b) for a, b in zip(fast["val_accuracy"], slow["val_accuracy"], strict=False)]
        rows.append(
            {
                "data": label,
                "grid": size,
                "epochs": epochs,
                "train_rows": fast["train_rows"],
                "baseline_seconds": baseline_seconds,
                "baseline_extrapolated_from": len(measured),
                "packed_seconds": fast["seconds"],
                "speedup": baseline_seconds / fast["seconds"],
                "packed_examples_per_second": examples / fast["seconds"],
                "baseline_examples_per_second": examples / baseline_seconds,
                "baseline_peak_rss_mib": slow["peak_rss_mib"],
                "packed_peak_rss_mib": fast["peak_rss_mib"],
                "max_accuracy_gap": max(gaps),
                "accuracy_within_tolerance": max(gaps) <= TOLERANCE[label],
                "packed_val_accuracy": fast["val_accuracy"],
                "baseline_val_accuracy": slow["val_accuracy"],
            }
        )
        print(
            f"{label} grid={size}: ×{rows[-1]['speedup']:.1f} (baseline {baseline_seconds:.1f} s, packed {fast['seconds']:.1f} s), "
            f"max accuracy gap {max(gaps):.4f}, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    return rows


def compare(label: str, sizes: list[int], rows: int) -> list[dict]:
    """The grid comparison on the bundled data (30 epochs, every λ of the baseline measured) or
    on the synthetic Parquet (1 epoch, the baseline measured for one λ and extrapolated)."""
    if label == "bundled":
        source = {
            "source": str(ROOT / "data" / "breast_cancer.csv"),
            "label": "diagnosis",
            "positive_class": "malignant",
            "work": str(CACHE / "bundled"),
        }
        return grid_comparison(label, source, sizes, epochs=30, baseline_points=16)
    source = {"source": str(synthetic(rows)), "label": "y", "positive_class": None, "work": str(CACHE / "synthetic")}
    return grid_comparison(label, source, sizes, epochs=1, baseline_points=1)


BUNDLED_PIPELINE = ["--folds", "1", "--epochs", "30", "--grid", ",".join(str(x) for x in grid_of(16))]
# The default grid (12 λ), 5 folds and l2 mode, but 2 epochs without early stopping, so the
# 1M-row run ends in minutes on 2 cores.
LARGE_PIPELINE = ["--label", "y", "--positive-class", "", "--epochs", "2", "--patience", "0"]
BREAKDOWN = {  # category: the ``time_<step>_seconds`` metrics of the parent run it sums (every step but the phases)
    "ingest": ["ingest_prepare"],
    "training": ["training"],
    "unit encoding, scoring, saving, data loading": ["unit_encode", "unit_score", "unit_save", "unit_load_data"],
    "evaluation (test predictions, bootstrap, slices, importance, report)": [
        "evaluate_predict",
        "evaluate_bootstrap",
        "evaluate_slices",
        "evaluate_importance",
        "evaluate_report",
    ],
    "registration (log model, drift, register, gate)": ["register_log_model", "register_drift", "register_gate"],
    "tracking (MLflow runs, metrics, dataset, artifacts)": [
        "tracking_start",
        "tracking_dataset",
        "tracking_points",
        "tracking_units",
        "tracking_evaluation",
    ],
}


def pipeline_env(work: Path) -> dict[str, str]:
    """The environment of a benchmarked command: its own SQLite store, work folder and Prefect home under ``work``."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "WD_PIPELINE_WORK_DIR": str(work / "w"),
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "WD_PIPELINE_DATA_ROOTS": str(CACHE),
    }


def stop_background_api(work: Path) -> None:
    """Stop the background Prefect API that commands run in ``work`` (its Prefect home) started."""
    command = [sys.executable, "-m", "wd_pipeline.cli", "local-api", "stop"]
    subprocess.run(command, cwd=work, env=pipeline_env(work), capture_output=True, check=False)


def start_background_api(work: Path) -> float:
    """Start the background Prefect API of ``work``'s Prefect home, as `wd local-api start` does; its seconds."""
    command = [sys.executable, "-m", "wd_pipeline.cli", "local-api", "start"]
    started = time.perf_counter()
    subprocess.run(command, cwd=work, env=pipeline_env(work), capture_output=True, check=True)
    return time.perf_counter() - started


def pipeline_breakdown(
    name: str, arguments: list[str], data: Path | None = None, *, keep_api: bool = False, warm_api: bool = False
) -> dict[str, Any]:
    """One real ``wd-pipeline run`` (ephemeral Prefect, SQLite MLflow) and where its wall time went.

    With ``warm_api`` the background Prefect API is started before the clock starts, as it is for
    every run but a machine's first one; its start is reported apart (``api_start_seconds``).

    Training is the pipeline's own measurement: the union of the intervals spent inside
    ``train_packed`` (``time_training_seconds``). Start-up is the wall time outside the flow
    function (imports, the temporary Prefect API, teardown). The named steps can overlap
    when two training tasks run at once, so "other" (Prefect's own work and what no step
    covers) is what is left of the flow's time and may come out slightly negative.
    """
    work = CACHE / f"pipeline-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = pipeline_env(work)
    api_start = start_background_api(work) if warm_api else None
    command = [
        sys.executable,
        "-m",
        "wd_pipeline.cli",
        "run",
        *(["--data", str(data)] if data else []),
        *arguments,
        "--experiment",
        f"bench-{name}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if not keep_api or done.returncode:
        stop_background_api(work)
    if done.returncode:
        raise RuntimeError(f"pipeline {name} failed:\n{done.stderr[-3000:]}")
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=[f"bench-{name}"], filter_string="tags.mlflow.runName != ''")
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    steps = {
        column.removeprefix("metrics.time_").removesuffix("_seconds"): float(parent[column])
        for column in runs.columns
        if column.startswith("metrics.time_")
    }
    flow = steps["flow"]
    parts = {"start-up and teardown": wall - flow}
    parts.update({label: sum(steps.get(step, 0.0) for step in members) for label, members in BREAKDOWN.items()})
    parts["other (Prefect, unmeasured)"] = wall - sum(parts.values())
    training = steps["training"]
    return {
        "name": name,
        "command": shlex.join(["wd-pipeline", "run", *command[4:]]),
        "wall_seconds": wall,
        "flow_seconds": flow,
        "training_seconds": training,
        "breakdown": parts,
        "steps": steps,
        "overhead_share": (wall - training) / wall,
        "flow_overhead_share": (flow - training) / flow,
        "api_start_seconds": api_start,
    }


def _seconds_between(first: str, second: str) -> float:
    def parse(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    return parse(second) - parse(first)


def help_seconds() -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wd_pipeline.cli", "--help"], capture_output=True, check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory.split(":", 1)[1].strip(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow-cpu"),
        "keras": version("keras"),
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic Parquet")
    parser.add_argument("--quick", action="store_true", help="bundled data only")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each ingest comparison")
    parser.add_argument(
        "--only",
        metavar="DATA:GRID",
        help="one comparison, e.g. synthetic:16, or ingest:numeric / ingest:categorical; printed, no results files written",
    )
    parser.add_argument(
        "--parts",
        default="grid,ingest,pipeline",
        help="comma-separated parts to run (grid, ingest, pipeline, startup); the others keep their figures in "
        "results.json",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "startup" in parts:  # its own section of RESULTS.md, replaced in place
        from benchmarks import startup

        load = os.getloadavg()
        measured = startup.measure()
        saved_report = ROOT / "benchmarks" / "results.json"
        everything = json.loads(saved_report.read_text())
        everything["startup"] = measured
        saved_report.write_text(json.dumps(everything, indent=2))
        startup.write_section(ROOT / "benchmarks" / "RESULTS.md", startup.markdown(measured, load))
        print(startup.markdown(measured, load))
        parts.discard("startup")
        if not parts:
            return

    if args.only:
        label, size = args.only.split(":")
        print(f"load average at start {os.getloadavg()}", flush=True)
        if label == "ingest":
            path = synthetic_categorical(args.rows) if size == "categorical" else synthetic(args.rows)
            print(json.dumps(ingest_comparison(path, args.repeats), indent=2))
        else:
            compare(label, [int(size)], args.rows)
        return
    saved = ROOT / "benchmarks" / "results.json"
    report: dict[str, Any] = json.loads(saved.read_text()) if parts != {"grid", "ingest", "pipeline"} else {}
    report.update({"machine": machine(), "tolerance": TOLERANCE})
    if "grid" in parts:
        report["grid"] = compare("bundled", [1, 8, 16], args.rows)
    if not args.quick:
        path = synthetic(args.rows)
        if "grid" in parts:
            report["grid"] += compare("synthetic", [1, 8, 16], args.rows)
        if "ingest" in parts:
            report["ingest"] = ingest_comparison(path, args.repeats)
            report["ingest_categorical"] = ingest_comparison(synthetic_categorical(args.rows), args.repeats)
    if "pipeline" in parts:
        report["pipeline"] = [pipeline_breakdown("bundled", BUNDLED_PIPELINE)]
        if not args.quick:
            report["pipeline"].append(
                pipeline_breakdown(f"synthetic-{args.rows}", LARGE_PIPELINE, synthetic(args.rows))
            )
    report["help_seconds"] = help_seconds()
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(report, indent=2))
    write_generated(ROOT / "benchmarks" / "RESULTS.md", markdown(report))
    print(markdown(report))


# Everything below this line in RESULTS.md is written by hand (or by another part's own writer) and kept.
KEPT_BELOW = "<!-- generated above; sections below are kept when the benchmark rewrites the part above -->"


def write_generated(results_md: Path, generated: str) -> None:
    """Replace the generated head of RESULTS.md, keeping the sections after :data:`KEPT_BELOW`."""
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else ""
    at = text.find(KEPT_BELOW)
    kept = text[at:] if at >= 0 else KEPT_BELOW + "\n"
    results_md.write_text(generated.rstrip("\n") + "\n\n" + kept, encoding="utf-8")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, no GPU; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}; load average at start {m['load_average_at_start']}.",
        "Reproduce: `./wd python -m benchmarks` (add `--quick` for the bundled data only, `--parts ingest,pipeline` "
        "to rerun only those sections, `--only synthetic:16` for one row, printed only).",
        "",
        "Baseline: one `model.fit` per λ, one after the other, Keras defaults (batch 32, its own shuffling).",
        "Packed: the pipeline's grid training (all λ in one stacked model, one function per epoch, XLA-compiled for long trainings).",
        f"Accuracy tolerance (seed noise): {report['tolerance']}.",
        "",
        "| data | train rows | epochs | grid | baseline s | packed s | speed-up | packed ex·λ/s | peak RSS base / packed MiB | max Δ val acc | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["grid"]:
        extrapolated = (
            ""
            if row["baseline_extrapolated_from"] == row["grid"]
            else f" (×{row['grid']} from {row['baseline_extrapolated_from']})"
        )
        lines.append(
            f"| {row['data']} | {row['train_rows']:,} | {row['epochs']} | {row['grid']} | "
            f"{row['baseline_seconds']:.1f}{extrapolated} | {row['packed_seconds']:.1f} | ×{row['speedup']:.1f} | "
            f"{row['packed_examples_per_second']:,.0f} | {row['baseline_peak_rss_mib']:.0f} / {row['packed_peak_rss_mib']:.0f} | "
            f"{row['max_accuracy_gap']:.4f} | {'yes' if row['accuracy_within_tolerance'] else 'NO'} |"
        )
    for key, what in (("ingest", "the synthetic Parquet"), ("ingest_categorical", "the categorical synthetic Parquet")):
        if key in report:
            lines += ["", ingest_line(report[key], what)]
    lines += [
        "",
        "Whole pipeline (`wd-pipeline run`, ephemeral Prefect, SQLite MLflow, fresh stores); seconds per part of its wall time.",
        "Training = union of the time inside `train_packed`, measured by the pipeline (`time_training_seconds` on the parent run).",
        "Start-up = wall time outside the flow function (imports, temporary Prefect API, teardown). Other rows sum the",
        '`time_*_seconds` steps; steps of the two training threads overlap each other and training, so "other" (what is',
        "left: Prefect's own work, unmeasured code) comes out negative when they do.",
        "",
    ]
    runs = report["pipeline"]
    lines += ["| part | " + " | ".join(run["name"] for run in runs) + " |", "|---|" + "---|" * len(runs)]
    for part in runs[0]["breakdown"]:
        lines.append(f"| {part} | " + " | ".join(f"{run['breakdown'][part]:.1f}" for run in runs) + " |")
    lines.append("| **wall** | " + " | ".join(f"**{run['wall_seconds']:.1f}**" for run in runs) + " |")
    lines.append(
        "| everything but training, share of wall | "
        + " | ".join(f"{100 * run['overhead_share']:.0f} %" for run in runs)
        + " |"
    )
    lines.append(
        "| same, inside the flow (no start-up) | "
        + " | ".join(f"{100 * run['flow_overhead_share']:.0f} %" for run in runs)
        + " |"
    )
    lines += [""] + [f"- {run['name']}: `{run['command']}`" for run in runs]
    lines += [
        "",
        f"`wd-pipeline --help`: {report['help_seconds']:.2f} s.",
        "",
    ]
    return "\n".join(lines)


def ingest_line(i: dict[str, Any], what: str) -> str:
    """One ingest comparison in words; results measured before the bare Arrow side existed lack it."""
    arrow = (
        f"bare `pq.read_table` + `pq.write_table` {i['bare_arrow_seconds']:.1f} s: "
        f"×{i['ingest_seconds'] / i['bare_arrow_seconds']:.2f}; vs "
        if "bare_arrow_seconds" in i
        else ""
    )
    runs = f"ingest {', '.join(f'{x:.1f}' for x in i['ingest_all'])}, bare with pandas {', '.join(f'{x:.1f}' for x in i['bare_all'])}"
    if "bare_arrow_all" in i:
        runs += f", bare Arrow {', '.join(f'{x:.1f}' for x in i['bare_arrow_all'])}"
    return (
        f"Ingest of {what} (read, sha256, validate, split, write): {i['ingest_seconds']:.1f} s vs {arrow}"
        f"bare `pq.read_table` + `to_pandas` + `Table.from_pandas` + `pq.write_table` {i['bare_seconds']:.1f} s: "
        f"×{i['ingest_seconds'] / i['bare_seconds']:.2f} (medians of {i['repeats']} alternating runs; all: {runs}; "
        "the first ingest in a process also imports scikit-learn)."
    )


if __name__ == "__main__":
    main()
