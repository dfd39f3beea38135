"""The grid trained on a local Dask cluster gives the same models as the thread pool.

Dask workers are separate processes: they reach Prefect and MLflow only through the
servers (an ephemeral Prefect API would be started once per worker), and they import
``flows`` / ``wd_pipeline`` from the same venv. So this runs against the local stack's
servers, once on two spawned Dask workers and once on threads, each with its own work
folder so neither resumes the other's trained units.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from tests.helpers.local_stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.stack]

GRID = [0.0, 1e-2]
SETTINGS: dict[str, Any] = {
    "grid": GRID,
    "folds": 1,
    "epochs": 5,
    "chunk_size": 1,
    "bootstrap_samples": 200,
    "seed": 42,
}


def run(work_dir: Path | str, name: str, **extra: Any) -> tuple[Any, float]:
    """One pipeline run in this process (the flow, not a deployment); returns its state and seconds."""
    from flows.pipeline import weight_decay_pipeline

    started = time.monotonic()
    state = weight_decay_pipeline(
        **SETTINGS, experiment=name, model_name=name, work_dir=str(work_dir), return_state=True, **extra
    )
    return state, time.monotonic() - started


def spawned_children() -> list[psutil.Process]:
    """Processes this test started through multiprocessing (Dask's nanny spawns its workers so)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def point_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> dict[str, Any]:
    """The parent run's grid-point runs by name (``l2 λ=1e-02``), without the refit of the choice."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {child.info.run_name: child for child in children if not child.info.run_name.startswith("refit")}


def val_metrics(table: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, float]]:
    return {(row["mode"], row["lambda"]): {k: v for k, v in row.items() if k.startswith("val_")} for row in table}


def test_dask_grid_matches_the_thread_pool(local_stack: LocalStack, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Relative on purpose: the flow must hand the workers an absolute work folder.
    dask_state, dask_seconds = run("work-dask", "dask-grid", dask_workers=2)
    assert dask_state.is_completed(), dask_state.message
    deadline = time.monotonic() + 30
    while spawned_children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not spawned_children(), "Dask worker processes outlived the flow run"

    local_state, local_seconds = run(tmp_path / "work-threads", "thread-grid")
    assert local_state.is_completed(), local_state.message
    print(f"\nwall time: Dask (2 workers) {dask_seconds:.1f} s, thread pool {local_seconds:.1f} s")

    dask_summary, local_summary = dask_state.result(), local_state.result()
    client = MlflowClient(tracking_uri=local_stack.mlflow_url)
    parent = client.get_run(dask_summary.parent_run_id)
    assert parent.data.params["work_dir"] == str(tmp_path.resolve() / "work-dask")
    assert parent.data.params["dask_workers"] == "2"
    dask_points = point_runs(client, "dask-grid", dask_summary.parent_run_id)
    assert sorted(dask_points) == ["l2 λ=0", "l2 λ=1e-02"]
    for child in dask_points.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["resumed"] == "false"  # trained on a worker, not loaded from a cache
        assert "val_log_loss" in child.data.metrics

    dask_table, local_table = val_metrics(dask_summary.evaluation.grid), val_metrics(local_summary.evaluation.grid)
    assert sorted(dask_table) == sorted(local_table) == [("l2", lam) for lam in GRID]
    for point, metrics in dask_table.items():
        assert metrics == pytest.approx(local_table[point], abs=1e-6, nan_ok=True), point
    local_points = point_runs(client, "thread-grid", local_summary.parent_run_id)
    for name, child in dask_points.items():
        assert child.data.metrics["val_log_loss"] == pytest.approx(
            local_points[name].data.metrics["val_log_loss"], abs=1e-6
        )
