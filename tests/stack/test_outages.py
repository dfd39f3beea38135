"""A server of the stack goes away in the middle of a deployment run (issue #6, outages).

Both tests trigger the ``adhoc`` deployment, wait until the grid is training (a first unit's
result is on disk), stop one server, start it again on the same port and store, and check
the end state in Prefect and MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers.local_stack import ADHOC, LocalStack
from wd_pipeline import storage
from wd_pipeline.ml.training import HISTORY_KEYS, RESULT_FILE
from wd_pipeline.ops import stack
from wd_pipeline.storage import Location
from wd_pipeline.tracking import runs

pytestmark = [pytest.mark.slow, pytest.mark.stack]

GRID = [0.0, 1e-2, 1e-1]
FOLDS = 2
EPOCHS = 60  # long enough that the outage falls into training, short enough for CI
MLFLOW_DOWN_SECONDS = 20
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def parameters(name: str, seed: int) -> dict[str, Any]:
    """A run of its own: the seed is part of every unit's key, so nothing is resumed from another test."""
    return {
        "grid": GRID,
        "folds": FOLDS,
        "chunk_size": 1,
        "epochs": EPOCHS,
        "patience": 0,
        "seed": seed,
        "bootstrap_samples": 100,
        "experiment": name,
        "model_name": name,
    }


def work_folder(local_stack: LocalStack) -> Location:
    """Where the stack's worker keeps flow runs' work: its ``--work-dir`` (a folder or s3://…), else the state dir's."""
    settings = local_stack.settings
    if settings is not None and settings.work_dir:
        return storage.absolute(settings.work_dir)
    return local_stack.state_dir / "work"


def finished_units(work: Location) -> set[str]:
    """Keys of the trained units (the result is written last, after the model), in a folder or in S3."""
    if storage.is_remote(work):
        found = storage.filesystem().glob(f"{str(work).removeprefix('s3://')}/points/*/{RESULT_FILE}")
        return {path.split("/")[-2] for path in found}
    return {path.parent.name for path in Path(work).glob(f"points/*/{RESULT_FILE}")}


def read_flow_run(flow_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def start_run(name: str, seed: int) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(ADHOC, parameters=parameters(name, seed), timeout=0)


def wait_until_training(local_stack: LocalStack, flow_run_id: Any, before: set[str], timeout: float = 180) -> None:
    """Until a new unit of this run is in the work folder: the flow runs and the grid is half-way."""
    deadline = time.monotonic() + timeout
    while not finished_units(work_folder(local_stack)) - before:
        state = read_flow_run(flow_run_id).state
        assert state.type.value not in TERMINAL, f"ended before training: {state}"
        assert time.monotonic() < deadline, f"no unit trained within {timeout} s; state {state.name}"
        time.sleep(0.5)


def wait_for_end(flow_run_id: Any, timeout: float = 300) -> Any:
    """Poll the Prefect server (retrying while it is not back yet) until the run is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = read_flow_run(flow_run_id)
        except Exception:  # the server is restarting
            run = None
        if run is not None and run.state.type.value in TERMINAL:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not final after {timeout} s: {run and run.state}")


def task_runs(flow_run_id: Any) -> tuple[list[Any], list[Any]]:
    """The subflow runs of a flow run, and the task runs of it and of its subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(run.id for run in subflows)]
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))
    return subflows, tasks


def unfinished(flow_run_id: Any) -> list[str]:
    """Subflow and task runs of a flow run that the Prefect server does not show COMPLETED."""
    subflows, tasks = task_runs(flow_run_id)
    return sorted(f"{run.name}: {run.state.name}" for run in [*subflows, *tasks] if run.state.type.value != "COMPLETED")


def retried_tasks(flow_run_id: Any) -> list[str]:
    """Names of the task runs that ran more than once."""
    return sorted(run.name for run in task_runs(flow_run_id)[1] if run.run_count > 1)


def mlflow_client(local_stack: LocalStack) -> MlflowClient:
    return MlflowClient(tracking_uri=local_stack.mlflow_url, registry_uri=local_stack.mlflow_url)


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`{runs.PARENT_RUN_TAG}` = '{parent_run_id}'")


def assert_complete_record(client: MlflowClient, experiment: str, flow_run_id: Any, work: Location) -> None:
    """One FINISHED run per grid point and fold, every epoch's value once and equal to the trained unit's."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs(
        [experiment_id], f"tags.`{runs.PREFECT_RUN_TAG}` = '{flow_run_id}' and tags.`{runs.OWNER_TAG}` != ''"
    )
    assert parent.info.status == "FINISHED"
    points = [run for run in children(client, experiment_id, parent.info.run_id) if run.info.run_name.startswith("l2 ")]
    assert sorted(run.info.run_name for run in points) == ["l2 λ=0", "l2 λ=1e-01", "l2 λ=1e-02"]
    for point in points:
        assert point.info.status == "FINISHED", point.info.run_name
        folds = children(client, experiment_id, point.info.run_id)
        assert sorted(run.info.run_name for run in folds) == [f"fold {k + 1}/{FOLDS}" for k in range(FOLDS)]
        for fold in folds:
            assert fold.info.status == "FINISHED", (point.info.run_name, fold.info.run_name)
            result = storage.join(work, "points", fold.data.tags["unit_key"], RESULT_FILE)
            trained = json.loads(storage.read_text(result))["history"]
            for key in HISTORY_KEYS:
                logged = sorted((m.step, m.value) for m in client.get_metric_history(fold.info.run_id, key))
                assert logged == list(enumerate(trained[key])), (point.info.run_name, fold.info.run_name, key)
    refits = [
        run for run in children(client, experiment_id, parent.info.run_id) if run.info.run_name.startswith("refit ")
    ]
    assert [run.info.status for run in refits] == ["FINISHED"]
    versions = client.search_model_versions(f"name = '{experiment}'")
    assert [v.run_id for v in versions] == [parent.info.run_id]


def run_through_outage(local_stack: LocalStack, name: str, seed: int, service: str, pause: float) -> tuple[Any, float]:
    """Trigger a run, stop ``service`` once the grid trains, start it again ``pause`` s later; wait for the end.

    Returns the final flow run and how long the service was away (stop and restart included).
    """
    flow_run = start_run(name, seed)
    wait_until_training(local_stack, flow_run.id, finished_units(work_folder(local_stack)))
    stack.stop_service(local_stack.state_dir, service)
    stopped = time.monotonic()
    time.sleep(pause)
    stack.start_service(local_stack.settings, service)
    down = time.monotonic() - stopped
    return wait_for_end(flow_run.id), down


MLFLOW_OUTAGE = "outage-mlflow"  # the run's experiment and model name


def run_through_mlflow_outage(local_stack: LocalStack) -> tuple[Any, float]:
    """A deployment run with the MLflow server away for 20 s while the grid trains (any stack's backend)."""
    return run_through_outage(local_stack, MLFLOW_OUTAGE, 1, stack.MLFLOW_SERVER, MLFLOW_DOWN_SECONDS)


def check_survived_mlflow_outage(local_stack: LocalStack, final: Any, down: float) -> None:
    """The tasks that hit the outage retried with backoff; nothing is missing or logged twice."""
    assert final.state.type.value == "COMPLETED", final.state
    retried = retried_tasks(final.id)
    assert retried, "no task hit the outage: it fell outside training"
    assert_complete_record(mlflow_client(local_stack), MLFLOW_OUTAGE, final.id, work_folder(local_stack))
    print(f"MLflow down {down:.1f} s; retried tasks: {retried}")


def test_prefect_server_restart_during_training(own_stack: LocalStack) -> None:
    """The run completes: the engine's client retries its calls and replays its state events.

    Measured behaviour, documented in the README: nothing is CRASHED or left RUNNING in
    Prefect or MLflow, and the worker is online again.
    """
    name = "outage-prefect"
    final, down = run_through_outage(own_stack, name, 2, stack.PREFECT_SERVER, 0)
    assert final.state.type.value == "COMPLETED", final.state
    assert unfinished(final.id) == []  # no task run stuck in Running or Pending
    client = mlflow_client(own_stack)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    assert client.search_runs([experiment_id], "attributes.status = 'RUNNING'") == []
    assert_complete_record(client, name, final.id, work_folder(own_stack))
    assert [(h.name, h.healthy) for h in stack.status(own_stack.state_dir)] == [
        (stack.PREFECT_SERVER, True),
        (stack.MLFLOW_SERVER, True),
        (stack.PREFECT_WORKER, True),
    ]
    print(f"Prefect server down {down:.1f} s (stop + start); the run still completed")
