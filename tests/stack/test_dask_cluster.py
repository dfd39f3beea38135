"""The grid trained on a Dask cluster whose workers share no folder with the flow.

The cluster is started the way it is on other hosts: ``dask scheduler`` and two
``dask worker`` commands, each worker in its own folder (working directory, HOME, TMPDIR)
and given only the servers' URLs and the S3 endpoint (see ``tests/helpers/dask_cluster.py``).
The flow runs as the command line does, in a folder of its own, with its work folder on S3:
splits and trained units reach the workers through the bucket and nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers.dask_cluster import DaskCluster, DaskWorker, running_cluster
from tests.helpers.local_stack import LocalStack
from wd_pipeline.ops import stack

pytestmark = [pytest.mark.slow, pytest.mark.stack]

ROOT = Path(__file__).resolve().parents[2]
GRID = ["0", "1e-3", "1e-2", "1e-1"]
SETTINGS = [
    "--data",
    str(ROOT / "data" / "breast_cancer.csv"),
    "--grid",
    ",".join(GRID),
    "--folds",
    "1",
    "--chunk-size",
    "1",
    "--seed",
    "42",
    "--bootstrap-samples",
    "200",
    "--importance-repeats",
    "0",
]
RUN_SECONDS = 900


@dataclass(frozen=True)
class Finished:
    """One command-line pipeline run: its exit, output and seconds, and its MLflow parent run."""

    returncode: int
    output: str
    seconds: float


def work_folder(tmp_path: Path, name: str) -> str:
    return str(tmp_path / name)


@pytest.fixture(scope="module")
def cluster(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Two workers that know the servers and the S3 endpoint, and nothing of the flow's folders."""
    env = stack.StackState.load(local_stack.state_dir).exports()
    with running_cluster(tmp_path_factory.mktemp("hosts"), env) as started:
        yield started


def pipeline(local_stack: LocalStack, folder: Path, argv: Sequence[str]) -> subprocess.Popen[str]:
    """``wd-pipeline run`` started in ``folder`` (a host of its own), against the stack's servers."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "wd_pipeline.cli", "run", *SETTINGS, *argv],
        cwd=folder,
        env=local_stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], started: float) -> Finished:
    output, _ = process.communicate(timeout=RUN_SECONDS)
    return Finished(process.returncode, output, time.monotonic() - started)


def run(local_stack: LocalStack, folder: Path, argv: Sequence[str]) -> Finished:
    started = time.monotonic()
    return finish(pipeline(local_stack, folder, argv), started)


def parent_run(client: MlflowClient, experiment: str) -> Any:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = [run for run in client.search_runs([experiment_id]) if "mlflow.parentRunId" not in run.data.tags]
    return parent


def point_runs(client: MlflowClient, parent: Any) -> dict[str, Any]:
    """The grid-point runs by name (``l2 λ=1e-02``), without the refit of the choice."""
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {child.info.run_name: child for child in children if not child.info.run_name.startswith("refit")}


def train_tasks() -> list[str]:
    """The Prefect task-run names of the grid's chunks (one λ each)."""
    return [f"train l2 fold 0 values=[{float(value)}]" for value in GRID]


def local_files(folder: Path) -> list[str]:
    """Work data found under ``folder``: splits (Parquet), trained models, unit records."""
    patterns = ("*.parquet", "*.keras", "*.npz", "result.json", "manifest.json")
    found = (path for pattern in patterns for path in folder.rglob(pattern) if path.is_file())
    return sorted(str(path.relative_to(folder)) for path in found)


def val_metrics(run: Any) -> dict[str, float]:
    return {key: value for key, value in run.data.metrics.items() if key.startswith("val_")}


def test_the_grid_spreads_over_two_workers_that_share_no_folder(
    local_stack: LocalStack, cluster: DaskCluster, tmp_path: Path
) -> None:
    flow_host = tmp_path / "flow-host"
    on_dask = run(
        local_stack,
        flow_host,
        ["--experiment", "dask-hosts", "--work-dir", work_folder(tmp_path, "work"), "--dask-address", cluster.address],
    )
    assert on_dask.returncode == 0, on_dask.output
    local = run(
        local_stack,
        tmp_path / "single-host",
        ["--experiment", "single-host", "--work-dir", str(tmp_path / "single-host" / "work")],
    )
    assert local.returncode == 0, local.output
    print(f"\nwall time: Dask (2 worker hosts) {on_dask.seconds:.1f} s, one process {local.seconds:.1f} s")

    ran = {worker.name: worker.finished_tasks() for worker in cluster.workers.values()}
    assert all(ran.values()), f"a worker trained nothing: {ran}"
    everything = [name for tasks in ran.values() for name in tasks]
    assert sorted(everything) == sorted(train_tasks()), ran
    assert {state for tasks in ran.values() for state in tasks.values()} == {"Completed"}
    for worker in cluster.workers.values():
        assert local_files(worker.folder) == [], f"{worker.name} kept work data on its own disk"

    client = MlflowClient(tracking_uri=local_stack.mlflow_url)
    dask_parent, local_parent = parent_run(client, "dask-hosts"), parent_run(client, "single-host")
    assert dask_parent.info.status == "FINISHED"
    assert dask_parent.data.metrics["chosen_lambda"] == local_parent.data.metrics["chosen_lambda"]
    dask_points, local_points = point_runs(client, dask_parent), point_runs(client, local_parent)
    assert sorted(dask_points) == sorted(local_points) and len(dask_points) == len(GRID)
    for name, point in dask_points.items():
        assert point.info.status == "FINISHED"
        assert point.data.tags["resumed"] == "false"  # trained on a worker, not found trained
        assert val_metrics(point) == pytest.approx(val_metrics(local_points[name]), abs=1e-6), name


def running_train_tasks() -> list[str]:
    """Names of the grid's task runs the Prefect server holds RUNNING."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as prefect:
        found = prefect.read_task_runs(
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_="train l2"),
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])),
            )
        )
    return [task_run.name for task_run in found]


def kill_mid_task(cluster: DaskCluster, timeout: float = 300.0) -> tuple[DaskWorker, set[str]]:
    """Once every worker is in the middle of a training task, kill one; returns it and the tasks then running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = running_train_tasks()
        if len(running) == len(cluster.workers):
            victim = cluster.busy_worker(timeout=5)
            victim.kill()
            return victim, set(running)
        time.sleep(0.2)
    raise TimeoutError(f"the workers were never all training at once within {timeout:.0f} s")


def test_a_worker_killed_mid_task_loses_nothing(local_stack: LocalStack, cluster: DaskCluster, tmp_path: Path) -> None:
    before = {worker.name: set(worker.finished_tasks()) for worker in cluster.workers.values()}
    started = time.monotonic()
    process = pipeline(
        local_stack,
        tmp_path / "flow-host",
        [
            "--experiment",
            "dask-kill",
            "--epochs",
            "60",
            "--patience",
            "60",
            "--work-dir",
            work_folder(tmp_path, "work"),
            "--dask-address",
            cluster.address,
        ],
    )
    try:
        victim, running = kill_mid_task(cluster)
    finally:
        done = finish(process, started)
    assert done.returncode == 0, done.output
    (survivor,) = [worker for worker in cluster.workers.values() if worker is not victim]
    killed_ran = set(victim.finished_tasks()) - before[victim.name]
    survivor_ran = set(survivor.finished_tasks()) - before[survivor.name]
    assert running <= survivor_ran, f"tasks running at the kill {running}, finished by {survivor.name}: {survivor_ran}"
    assert not running & killed_ran
    assert sorted(killed_ran | survivor_ran) == sorted(train_tasks())

    client = MlflowClient(tracking_uri=local_stack.mlflow_url)
    parent = parent_run(client, "dask-kill")
    assert parent.info.status == "FINISHED"
    points = point_runs(client, parent)
    assert len(points) == len(GRID)
    for name, point in points.items():
        assert point.info.status == "FINISHED", name
        epochs = int(point.data.metrics["epochs_run"])
        history = client.get_metric_history(point.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(epochs)), f"{name}: an epoch logged twice or lost"
