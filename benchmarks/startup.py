"""Start-up: what a run costs outside training once the background Prefect API runs.

Two targets of issue #14 in one measurement, on the bundled data, with one ``PREFECT_HOME``
shared by every run (as a user's is): the background API is started first and timed on
its own, then

- a small run twice in one folder: the second has nothing left to train and returns the first
  run's result (same data and settings), its wall time; then once more without compiled modules
  kept (see below);
- then the default ``wd-pipeline run`` in a fresh work folder with a fresh experiment (in the
  MLflow store the small runs created; warm file caches): its share of wall time outside
  training.

Python keeps the modules it compiles (``__pycache__``) after a command's first use, so a user's
later commands start from them; this machine's ``PYTHONDONTWRITEBYTECODE`` would make every
command compile every module again. The runs keep them in the benchmark's cache folder instead
(``PYTHONPYCACHEPREFIX``; the environment's own files are never written), except the one
re-run measured without them, which says what that costs.

Run with ``python -m benchmarks --parts startup``; the section of RESULTS.md it writes is
replaced in place, the rest of the file is left as it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "startup"
SMALL = ["--folds", "1", "--epochs", "5", "--grid", "0,1e-2"]
HEADING = "## Start-up with the background Prefect API (issue #14)"
TARGET_OUTSIDE_SHARE = 0.30
TARGET_RESUMED_SECONDS = 10.0


def _env(folder: Path, *, compiled: bool = True) -> dict[str, str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{CACHE / 'mlflow.db'}",
        "WD_PIPELINE_WORK_DIR": str(folder / "w"),
        "PREFECT_HOME": str(CACHE / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("PREFECT_API_URL", None)
    if compiled:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def _timed(arguments: list[str], folder: Path, *, compiled: bool = True) -> tuple[float, str]:
    """Wall seconds of one command, and what it printed."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "wd_pipeline.cli", *arguments],
        cwd=folder,
        env=_env(folder, compiled=compiled),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"`wd-pipeline {shlex.join(arguments)}` failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def _parent_steps(experiment: str) -> dict[str, float]:
    """The ``time_*_seconds`` metrics of the experiment's newest parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{CACHE / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parents = [
        run
        for run in client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    metrics = parents[0].data.metrics
    return {
        name.removeprefix("time_").removesuffix("_seconds"): value
        for name, value in metrics.items()
        if name.startswith("time_")
    }


def _run(name: str, arguments: list[str], folder: Path, *, compiled: bool = True) -> dict[str, Any]:
    experiment = f"bench-startup-{name}"
    wall, printed = _timed(["run", *arguments, "--experiment", experiment], folder, compiled=compiled)
    reused = any(line.startswith("reused ") for line in printed.splitlines())
    # A run that returned an earlier run's result opened no MLflow run: no steps of its own to read.
    steps = {} if reused else _parent_steps(experiment)
    training = steps.get("training", 0.0)
    return {
        "command": shlex.join(["wd-pipeline", "run", *arguments, "--experiment", experiment]),
        "wall_seconds": wall,
        "reused": reused,
        "compiled_modules_kept": compiled,
        "flow_seconds": steps.get("flow"),
        "training_seconds": training,
        "outside_flow_seconds": wall - steps["flow"] if steps else None,
        "outside_training_share": (wall - training) / wall,
        "steps": steps,
    }


def measure() -> dict[str, Any]:
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    api_start, _ = _timed(["local-api", "start"], CACHE)
    try:
        first = _run("small", SMALL, CACHE / "small")
        resumed = _run("small", SMALL, CACHE / "small")
        uncompiled = _run("small", SMALL, CACHE / "small", compiled=False)
        default = _run("default", [], CACHE / "default")  # a fresh work folder and experiment, the store exists
    finally:
        api_stop, _ = _timed(["local-api", "stop"], CACHE)
    return {
        "api_start_seconds": api_start,
        "api_stop_seconds": api_stop,
        "default": default,
        "small_first": first,
        "small_resumed": resumed,
        "small_resumed_uncompiled": uncompiled,
        "load_average_at_end": os.getloadavg(),
    }


def markdown(result: dict[str, Any], load_at_start: tuple[float, float, float]) -> str:
    default, first, resumed = result["default"], result["small_first"], result["small_resumed"]
    uncompiled = result["small_resumed_uncompiled"]
    share, again = default["outside_training_share"], resumed["wall_seconds"]

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    def row(label: str, run: dict[str, Any]) -> str:
        return (
            f"| {label} | {run['wall_seconds']:.1f} | {seconds(run['outside_flow_seconds'])} "
            f"| {seconds(run['flow_seconds'])} | {run['training_seconds']:.1f} "
            f"| {100 * run['outside_training_share']:.0f} % |"
        )

    def again_label(run: dict[str, Any]) -> str:
        how = "returns the first run's result" if run["reused"] else "nothing to train"
        return f"small, again ({how}{'' if run['compiled_modules_kept'] else '; no compiled modules kept'})"

    return "\n".join(
        [
            HEADING,
            "",
            f"Reproduce: `./wd python -m benchmarks --parts startup`. Load average at start {load_at_start}, "
            f"at end {tuple(round(x, 2) for x in result['load_average_at_end'])}.",
            f"All runs share one `PREFECT_HOME`: `wd-pipeline local-api start` first ({result['api_start_seconds']:.1f} s, "
            f"the one start of the background API), `local-api stop` last ({result['api_stop_seconds']:.1f} s).",
            "",
            "| run | wall s | outside the flow s | flow s | training s | outside training |",
            "|---|---|---|---|---|---|",
            row("default, fresh folder and experiment", default),
            row("small, first", first),
            row(again_label(resumed), resumed),
            row(again_label(uncompiled), uncompiled),
            "",
            "A run that returns an earlier run's result opens no MLflow run, so its time in the flow is not "
            "recorded (—). Every run keeps Python's compiled modules in the benchmark's cache folder, as a "
            "user's environment keeps them after the first command, except the one marked otherwise, which "
            "compiles every module again (this machine sets `PYTHONDONTWRITEBYTECODE`).",
            "",
            f"- default run outside training: {100 * share:.0f} % (target ≤ {100 * TARGET_OUTSIDE_SHARE:.0f} %): "
            f"{met(share <= TARGET_OUTSIDE_SHARE)}",
            f"- re-run with nothing to train: {again:.1f} s (target ≤ {TARGET_RESUMED_SECONDS:.0f} s): "
            f"{met(again <= TARGET_RESUMED_SECONDS)}",
            f"- default: `{default['command']}`; small: `{first['command']}`",
            "",
        ]
    )


def write_section(results_md: Path, section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving the other sections as they are."""
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else ""
    start = text.find(HEADING)
    if start < 0:
        results_md.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        return
    end = text.find("\n## ", start + len(HEADING))
    rest = "" if end < 0 else text[end + 1 :]
    results_md.write_text(text[:start] + section + ("\n" + rest if rest else ""), encoding="utf-8")
