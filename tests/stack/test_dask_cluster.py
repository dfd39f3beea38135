"""The grid trained on a Dask cluster whose workers share no folder with the flow, on the production stores.

The cluster is started the way it is on other hosts: ``dask scheduler`` and two
``dask worker`` commands, each worker in its own folder (working directory, HOME, TMPDIR)
and given only the servers' URLs and the S3 endpoint (see ``tests/helpers/dask_cluster.py``).
The flow runs as the command line does, in a folder of its own, with its work folder on S3:
splits and trained units reach the workers through the bucket and nothing else. The servers
are the production shape (``infra/docker-compose.yml``): the shared ``production_stack``
(tests/stack/conftest.py), Prefect and MLflow on PostgreSQL and MLflow's artifacts in the same
S3 store. Each run keeps to an experiment and a work prefix of its own.
"""

from __future__ import annotations

import secrets
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
from tests.helpers.postgres import Postgres
from tests.helpers.s3 import BUCKET, SeaweedS3
from wd_pipeline.data import splits
from wd_pipeline.ml import training
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
CACHE_FOLDER = "wd-pipeline-s3-cache"  # where wd_pipeline.storage keeps a host's copies, under its TMPDIR


@dataclass(frozen=True)
class Finished:
    """One command-line pipeline run: its exit, output and seconds."""

    returncode: int
    output: str
    seconds: float


@dataclass(frozen=True)
class FlowHost:
    """Where a pipeline command runs: its own folder (cwd, TMPDIR and so its S3 cache) and environment."""

    folder: Path
    env: dict[str, str]


def artifacts_prefix(started: LocalStack) -> str:
    """The bucket prefix the stack's MLflow server stores artifacts under."""
    assert started.settings is not None
    destination = str(started.settings.mlflow_artifacts_destination)
    return destination.removeprefix(f"s3://{BUCKET}/")


def database_of(started: LocalStack) -> str:
    """The PostgreSQL database the stack's MLflow server keeps its runs in."""
    assert started.settings is not None and started.settings.mlflow_backend_uri is not None
    return started.settings.mlflow_backend_uri.rsplit("/", 1)[-1]


def s3_work_folder(name: str) -> str:
    return f"s3://{BUCKET}/{name}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def cluster(
    production_stack: LocalStack, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaskCluster]:
    """Two workers that know the servers and the S3 endpoint, and nothing of the flow's folders."""
    env = {**stack.StackState.load(production_stack.state_dir).exports(), **s3_server.env()}
    with running_cluster(tmp_path_factory.mktemp("hosts"), env) as started:
        yield started


def flow_host(started: LocalStack, s3_server: SeaweedS3, folder: Path) -> FlowHost:
    (folder / "tmp").mkdir(parents=True)
    return FlowHost(folder, {**started.env, **s3_server.env(), "TMPDIR": str(folder / "tmp")})


def pipeline(host: FlowHost, argv: Sequence[str]) -> subprocess.Popen[str]:
    """``wd-pipeline run`` started on ``host``, against the stack's servers."""
    return subprocess.Popen(
        [sys.executable, "-m", "wd_pipeline.cli", "run", *SETTINGS, *argv],
        cwd=host.folder,
        env=host.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], started: float) -> Finished:
    output, _ = process.communicate(timeout=RUN_SECONDS)
    return Finished(process.returncode, output, time.monotonic() - started)


def run(host: FlowHost, argv: Sequence[str]) -> Finished:
    started = time.monotonic()
    return finish(pipeline(host, argv), started)


def parent_run(client: MlflowClient, experiment: str) -> Any:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = [run for run in client.search_runs([experiment_id]) if "mlflow.parentRunId" not in run.data.tags]
    return parent


def point_runs(client: MlflowClient, parent: Any) -> dict[str, Any]:
    """The grid-point runs by name (``l2 λ=1e-02``), without the refit of the choice."""
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {child.info.run_name: child for child in children if not child.info.run_name.startswith("refit")}


def train_tasks() -> list[str]:
    """The Prefect task-run names of the grid's chunks (one (fold, λ) unit each)."""
    return [f"train l2 units=[(0, {float(value)})]" for value in GRID]


def cached_copy(folder: Path, work_dir: str) -> Path:
    """A host's copy of what it read from or wrote to the S3 work folder: its S3 cache, under its TMPDIR."""
    return folder / "tmp" / CACHE_FOLDER / work_dir.removeprefix("s3://")


def stray_files(folder: Path, allowed: Path) -> list[str]:
    """Work data (splits, models, unit records) a host keeps under ``folder`` but outside ``allowed``."""
    patterns = ("*.parquet", "*.keras", "*.npz", "result.json", "manifest.json")
    found = (path for pattern in patterns for path in folder.rglob(pattern) if path.is_file())
    return sorted(str(path.relative_to(folder)) for path in found if not path.is_relative_to(allowed))


def units(folder: Path) -> set[str]:
    """Keys of the complete units in a host's copy of the work folder."""
    return {path.parent.name for path in folder.glob(f"points/*/{training.RESULT_FILE}")}


def units_in_bucket(s3_server: SeaweedS3, work_dir: str) -> set[str]:
    prefix = work_dir.removeprefix(f"s3://{BUCKET}/")
    keys = s3_server.keys(BUCKET, f"{prefix}/points/")
    return {key.split("/")[-2] for key in keys if key.endswith(f"/{training.RESULT_FILE}")}


def val_metrics(run: Any) -> dict[str, float]:
    return {key: value for key, value in run.data.metrics.items() if key.startswith("val_")}


def test_the_grid_spreads_over_two_workers_that_share_no_folder(
    production_stack: LocalStack, postgres: Postgres, s3_server: SeaweedS3, cluster: DaskCluster, tmp_path: Path
) -> None:
    work_dir = s3_work_folder("dask-hosts")
    before = {worker.name: worker.log_size() for worker in cluster.workers.values()}
    host = flow_host(production_stack, s3_server, tmp_path / "flow-host")
    on_dask = run(host, ["--experiment", "dask-hosts", "--work-dir", work_dir, "--dask-address", cluster.address])
    assert on_dask.returncode == 0, on_dask.output
    single = flow_host(production_stack, s3_server, tmp_path / "single-host")
    local = run(single, ["--experiment", "single-host", "--work-dir", str(single.folder / "work")])
    assert local.returncode == 0, local.output
    print(
        f"\nwall time: Dask (2 worker hosts, S3 work folder) {on_dask.seconds:.1f} s, one process {local.seconds:.1f} s"
    )

    # Which worker ran which task: Prefect's line on the worker that finished it.
    ran = {worker.name: worker.finished_tasks(since=before[worker.name]) for worker in cluster.workers.values()}
    assert all(ran.values()), f"a worker trained nothing: {ran}"
    assert sorted(name for tasks in ran.values() for name in tasks) == sorted(train_tasks()), ran
    assert {state for tasks in ran.values() for state in tasks.values()} == {"Completed"}
    # What each trained, it wrote to the bucket (its cache keeps what it uploaded), and the
    # splits it trained on it read from there: nothing else of the flow's reached it.
    trained = {worker.name: units(cached_copy(worker.folder, work_dir)) for worker in cluster.workers.values()}
    grid_units = set().union(*trained.values())
    assert all(trained.values()) and sum(map(len, trained.values())) == len(grid_units) == len(GRID), trained
    assert grid_units < units_in_bucket(s3_server, work_dir)  # and the refit, trained by the flow
    for worker in cluster.workers.values():
        assert list(cached_copy(worker.folder, work_dir).glob(f"splits/*/{splits.MANIFEST}")), worker.name
        cache = worker.folder / "tmp" / CACHE_FOLDER
        assert stray_files(worker.folder, cache) == [], f"{worker.name} kept work data outside its S3 cache"
    # The flow's TMPDIR holds its S3 cache and what MLflow stages while logging the model.
    assert stray_files(host.folder, host.folder / "tmp") == [], "the flow kept work data outside its TMPDIR"

    client = MlflowClient(tracking_uri=production_stack.mlflow_url)
    dask_parent, local_parent = parent_run(client, "dask-hosts"), parent_run(client, "single-host")
    assert dask_parent.info.status == "FINISHED"
    assert dask_parent.data.params["work_dir"] == work_dir
    assert dask_parent.data.metrics["chosen_lambda"] == local_parent.data.metrics["chosen_lambda"]
    dask_points, local_points = point_runs(client, dask_parent), point_runs(client, local_parent)
    assert sorted(dask_points) == sorted(local_points) and len(dask_points) == len(GRID)
    for name, point in dask_points.items():
        assert point.info.status == "FINISHED"
        assert point.data.tags["resumed"] == "false"  # trained on a worker, not found trained
        assert val_metrics(point) == pytest.approx(val_metrics(local_points[name]), abs=1e-6), name

    # The production stores hold it: the runs in PostgreSQL, the registered model's files in the bucket
    # (under the experiment's own prefix: other modules' runs log to the same stack).
    stored = {row[0] for row in postgres.query(database_of(production_stack), "SELECT run_uuid FROM runs")}
    assert {dask_parent.info.run_id, local_parent.info.run_id} <= stored
    artifacts = s3_server.keys(BUCKET, f"{artifacts_prefix(production_stack)}/{dask_parent.info.experiment_id}/")
    assert any(key.endswith("/MLmodel") for key in artifacts) and any(key.endswith(".keras") for key in artifacts)


def running_train_tasks() -> dict[Any, str]:
    """The grid's task runs the Prefect server holds RUNNING: their names by id.

    The server is shared: a run killed by another module's test leaves its task runs RUNNING for good.
    """
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
    return {task_run.id: task_run.name for task_run in found}


def kill_mid_task(cluster: DaskCluster, stale: set[Any], timeout: float = 300.0) -> tuple[DaskWorker, set[str]]:
    """Once every worker is in the middle of a training task, kill one; returns it and the tasks then running.

    ``stale``: ids of task runs that were RUNNING before the run started, not counted.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [name for task_run_id, name in running_train_tasks().items() if task_run_id not in stale]
        if len(running) == len(cluster.workers):
            victim = cluster.busy_worker(timeout=5)
            victim.kill()
            return victim, set(running)
        time.sleep(0.2)
    raise TimeoutError(f"the workers were never all training at once within {timeout:.0f} s")


def test_a_worker_killed_mid_task_loses_nothing(
    production_stack: LocalStack, s3_server: SeaweedS3, cluster: DaskCluster, tmp_path: Path
) -> None:
    """Last in the module: it leaves the cluster one worker short."""
    before = {worker.name: worker.log_size() for worker in cluster.workers.values()}
    work_dir = s3_work_folder("dask-kill")
    host = flow_host(production_stack, s3_server, tmp_path / "flow-host")
    argv = ["--experiment", "dask-kill", "--epochs", "60", "--patience", "60", "--work-dir", work_dir]
    stale = set(running_train_tasks())
    started = time.monotonic()
    process = pipeline(host, [*argv, "--dask-address", cluster.address])
    try:
        victim, running = kill_mid_task(cluster, stale)
    finally:
        done = finish(process, started)
    del cluster.workers[victim.name]
    assert done.returncode == 0, done.output
    (survivor,) = cluster.workers.values()
    killed_ran = set(victim.finished_tasks(since=before[victim.name]))
    survivor_ran = set(survivor.finished_tasks(since=before[survivor.name]))
    assert running <= survivor_ran, f"tasks running at the kill {running}, finished by {survivor.name}: {survivor_ran}"
    assert not running & killed_ran
    assert sorted(killed_ran | survivor_ran) == sorted(train_tasks())
    trained = units(cached_copy(victim.folder, work_dir)) | units(cached_copy(survivor.folder, work_dir))
    assert len(trained) == len(GRID) and trained < units_in_bucket(s3_server, work_dir)

    client = MlflowClient(tracking_uri=production_stack.mlflow_url)
    parent = parent_run(client, "dask-kill")
    assert parent.info.status == "FINISHED"
    points = point_runs(client, parent)
    assert len(points) == len(GRID)
    for name, point in points.items():
        assert point.info.status == "FINISHED", name
        epochs = int(point.data.metrics["epochs_run"])
        history = client.get_metric_history(point.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(epochs)), f"{name}: an epoch logged twice or lost"
