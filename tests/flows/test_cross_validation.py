"""k-fold CV over two weight-decay modes: k × grid fold runs, consistent aggregates, a refit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.stores import isolated_store

pytestmark = pytest.mark.slow

FOLDS = 3
GRID = [0.0, 1e-2]
MODES = ["l2", "decoupled"]


@pytest.fixture(scope="module")
def cv_run(prefect_api, tmp_path_factory):
    with isolated_store(tmp_path_factory.mktemp("cv")):
        state = weight_decay_pipeline(
            grid=GRID,
            modes=MODES,
            folds=FOLDS,
            epochs=40,
            patience=5,
            rule="one-se",
            model_name="wd-cv",
            return_state=True,
        )
        yield state


def runs_under(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_k_times_grid_fold_runs_under_point_runs(cv_run) -> None:
    assert cv_run.is_completed()
    summary = cv_run.result()
    client = MlflowClient()
    children = runs_under(client, summary.experiment_id, summary.parent_run_id)
    points = [run for run in children if not run.info.run_name.startswith("refit")]
    assert sorted(run.info.run_name for run in points) == ["decoupled λ=0", "decoupled λ=1e-02", "l2 λ=0", "l2 λ=1e-02"]
    for point in points:
        folds = runs_under(client, summary.experiment_id, point.info.run_id)
        assert sorted(run.info.run_name for run in folds) == [f"fold {i}/{FOLDS}" for i in range(1, FOLDS + 1)]
        values = np.array([run.data.metrics["val_log_loss"] for run in folds])
        assert point.data.metrics["val_log_loss"] == pytest.approx(values.mean())
        assert point.data.metrics["val_log_loss_std"] == pytest.approx(values.std(ddof=1))
        assert point.data.metrics["val_log_loss_se"] == pytest.approx(values.std(ddof=1) / np.sqrt(FOLDS))
        stopped = [run.data.metrics["stopped_epoch"] for run in folds]
        assert all(1 <= epoch <= 40 for epoch in stopped)
        assert point.data.metrics["stopped_epoch"] == pytest.approx(np.mean(stopped))


def test_selection_refit_and_test_are_recorded(cv_run) -> None:
    summary = cv_run.result()
    client = MlflowClient()
    parent = client.get_run(summary.parent_run_id)
    tags = parent.data.tags
    assert tags["selection.rule"] == "one-se"
    assert {tags["selection.l2.lambda"], tags["selection.decoupled.lambda"]} <= {"0.0", "0.01"}
    assert summary.evaluation.selection.mode in MODES and summary.evaluation.selection.lam in GRID
    refit = [
        r
        for r in runs_under(client, summary.experiment_id, summary.parent_run_id)
        if r.info.run_name.startswith("refit")
    ]
    assert len(refit) == 1
    assert refit[0].data.params["fold"] == "-1"
    assert int(refit[0].data.params["epochs"]) == parent.data.metrics["refit_epochs"]
    assert parent.data.metrics["test_accuracy"] > 0.85


def test_lambda_zero_is_trained_once_for_both_modes(cv_run) -> None:
    """λ = 0 is the same model in every mode: the second mode resumes the first's folds."""
    summary = cv_run.result()
    client = MlflowClient()
    zero_points = [
        r for r in runs_under(client, summary.experiment_id, summary.parent_run_id) if r.info.run_name.endswith("λ=0")
    ]
    resumed = [
        run.data.tags["resumed"]
        for point in zero_points
        for run in runs_under(client, summary.experiment_id, point.info.run_id)
    ]
    assert sorted(resumed) == ["false"] * FOLDS + ["true"] * FOLDS


def test_subflow_parameters_stay_small(cv_run) -> None:
    """Flows pass paths and table rows, not per-epoch histories: Prefect caps parameters at 512 KiB."""

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        pipeline_run = client.read_flow_run(cv_run.state_details.flow_run_id)
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_run.id]))
        )
    assert {run.name for run in subflows} and len(subflows) >= 4
    sizes = {run.name: len(json.dumps(run.parameters, default=str)) for run in subflows}
    assert max(sizes.values()) < 64_000, sizes
