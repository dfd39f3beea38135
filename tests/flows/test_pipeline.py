"""The whole pipeline through Prefect into a real MLflow store (SQLite in a temp folder)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.stores import isolated_store
from wd_pipeline import provenance
from wd_pipeline.config import DEFAULT_EXPERIMENT

pytestmark = pytest.mark.slow

GRID = [0.0, 1e-2, 1e-1]
MODEL = "wd-test-model"


def run(**overrides):
    params = {
        "grid": GRID,
        "epochs": 30,
        "batch_size": 32,
        "model_name": MODEL,
        "max_parallel": 2,
        "folds": 1,
        "patience": 0,
        **overrides,
    }
    return weight_decay_pipeline(**params, return_state=True)


def children(client: MlflowClient, experiment_id: str, parent_run_id: str, prefix: str = "l2 ") -> list:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return [run for run in runs if run.info.run_name.startswith(prefix)]


@pytest.fixture(scope="module")
def three_runs(prefect_api, tmp_path_factory):
    """A weak model (2 epochs), a better one (30 epochs), then the same again (resumed, and evaluated and
    registered afresh rather than returning the finished run's result)."""
    with isolated_store(tmp_path_factory.mktemp("pipeline")) as folder:
        states = [run(epochs=2), run(), run(reuse="never")]
        yield folder, states


def test_every_run_completes(three_runs) -> None:
    _, states = three_runs
    assert [state.type.value for state in states] == ["COMPLETED"] * 3


def test_registry_champion_then_challenger(three_runs) -> None:
    _, states = three_runs
    weak, better, same = (state.result().registry for state in states)
    assert (weak.version, weak.alias) == ("1", "champion")
    assert (better.version, better.alias) == ("2", "champion")
    assert better.new_value < better.champion_value  # log loss: lower is better
    assert (same.version, same.alias) == ("3", "challenger")
    assert same.new_value == pytest.approx(same.champion_value)  # a tie keeps the champion
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "3"
    version = client.get_model_version(MODEL, "3")
    assert (
        "sha256" in version.description and "95% bootstrap confidence intervals" in version.description
    )  # the model card
    tags = version.tags
    assert tags["gate.alias"] == "challenger" and "does not beat champion v2" in tags["gate.reason"]
    code = provenance.collect().tags()  # the code that made the version: its tags and its card's "Code"
    assert {key: tags.get(key) for key in code} == code
    assert f"- **Git commit**: `{code['code.git_commit']}`" in version.description


def test_parent_run_holds_config_plots_dataset_and_decision(three_runs) -> None:
    _, states = three_runs
    summary = states[1].result()
    client = MlflowClient()
    parent = client.get_run(summary.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == DEFAULT_EXPERIMENT
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grid"] == "0,0.01,0.1" and parent.data.params["epochs"] == "30"
    assert parent.data.params["positive_class"] == "malignant"  # the bundled data's own default
    assert parent.data.tags["prefect.flow_run_id"] == str(states[1].state_details.flow_run_id)
    assert parent.data.tags["registry.alias"] == "champion"
    code = provenance.collect().tags()
    assert {key: parent.data.tags.get(key) for key in code} == code
    assert parent.data.metrics["chosen_lambda"] in GRID
    for name in ("accuracy", "roc_auc", "log_loss", "precision", "recall", "f1", "brier"):
        assert 0 <= parent.data.metrics[f"test_{name}"] <= 1 or name == "log_loss"
    assert parent.data.metrics["test_accuracy"] > 0.9
    artifacts = {
        a.path for folder in ("plots", "grid", "data", "") for a in client.list_artifacts(parent.info.run_id, folder)
    }
    plots = {
        f"plots/{name}.png"
        for name in (
            "validation_curve",
            "weight_norm",
            "generalization_gap",
            "learning_curves",
            "roc_curve",
            "confusion_matrix",
            "calibration",
        )
    }
    assert artifacts >= plots | {"grid/results.csv", "grid/folds.csv", "data/manifest.json", "model_card.md"}
    assert {"data/profile.json", "data/profile.md"} <= artifacts
    png = Path(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="plots/validation_curve.png")
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    contexts = {tag.value for d in parent.inputs.dataset_inputs for tag in d.tags}
    assert contexts == {"train", "validation", "test"}
    train = next(d.dataset for d in parent.inputs.dataset_inputs if d.tags[0].value == "train")
    assert json.loads(train.profile) == {"num_rows": 341, "num_elements": 341 * 31}  # the whole split, not the sample
    columns = json.loads(train.schema)["mlflow_colspec"]
    assert len(columns) == 31 and all(column["required"] for column in columns)


def test_parent_run_says_where_its_time_went(three_runs) -> None:
    """Issue #5: the flow's wall time, the training inside it, and the named steps around it."""
    _, states = three_runs
    metrics = MlflowClient().get_run(states[1].result().parent_run_id).data.metrics
    flow, training = metrics["time_flow_seconds"], metrics["time_training_seconds"]
    assert 0 < training < flow
    steps = [
        "ingest_prepare",
        "tracking_start",
        "tracking_dataset",
        "tracking_points",
        "tracking_units",
        "unit_load_data",
        "unit_score",
        "unit_save",
        "evaluate_predict",
        "evaluate_bootstrap",
        "evaluate_report",
        "tracking_evaluation",
        "register_log_model",
        "register_gate",
        "phase_ingest",
        "phase_train_grid",
        "phase_evaluate",
        "phase_register",
    ]
    assert all(metrics[f"time_{step}_seconds"] > 0 for step in steps)
    phases = sum(metrics[f"time_phase_{phase}_seconds"] for phase in ("ingest", "train_grid", "evaluate", "register"))
    assert phases + metrics["time_tracking_start_seconds"] <= flow
    resumed = MlflowClient().get_run(states[2].result().parent_run_id).data.metrics
    assert resumed["time_training_seconds"] == 0  # every unit, the refit too, was found trained


def test_one_child_run_per_grid_point(three_runs) -> None:
    _, states = three_runs
    summary = states[1].result()
    client = MlflowClient()
    runs = children(client, summary.experiment_id, summary.parent_run_id)
    assert sorted(r.info.run_name for r in runs) == ["l2 λ=0", "l2 λ=1e-01", "l2 λ=1e-02"]
    for child in runs:
        assert child.info.status == "FINISHED"
        lam = float(child.data.params["lambda"])
        assert float(child.data.params["keras_l2"]) == pytest.approx(lam / 2)
        for series in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert len(client.get_metric_history(child.info.run_id, series)) == 30
        assert {"val_log_loss", "val_accuracy", "val_roc_auc", "weight_norm", "train_log_loss"} <= set(
            child.data.metrics
        )
        point = next(p for p in summary.evaluation.grid if p["lambda"] == lam)
        assert point["mode"] == "l2" and point["n_folds"] == 1
        assert child.data.metrics["val_accuracy"] == pytest.approx(point["val_accuracy"], abs=1e-6)
        assert child.data.metrics["val_log_loss"] == pytest.approx(point["val_log_loss"])
    norms = {float(r.data.params["lambda"]): r.data.metrics["weight_norm"] for r in runs}
    assert norms[0.1] < norms[0.0]  # weight decay shrinks the weights


def test_rerun_resumes_finished_grid_points(three_runs) -> None:
    _, states = three_runs
    client = MlflowClient()
    first, again = states[1].result(), states[2].result()
    resumed = [r.data.tags["resumed"] for r in children(client, again.experiment_id, again.parent_run_id)]
    trained = [r.data.tags["resumed"] for r in children(client, first.experiment_id, first.parent_run_id)]
    assert resumed == ["true"] * 3 and trained == ["false"] * 3
    refit = children(client, again.experiment_id, again.parent_run_id, prefix="refit ")
    assert [r.data.tags["resumed"] for r in refit] == ["true"]


def test_champion_predicts_probabilities_from_raw_features(three_runs, bundled: pd.DataFrame) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    features = bundled.drop(columns="diagnosis")
    assert model.metadata.get_input_schema().input_names() == list(features.columns)
    probability = model.predict(features)["probability"].to_numpy()
    assert probability.shape == (len(bundled),)
    assert np.all((probability >= 0) & (probability <= 1))
    accuracy = np.mean((probability >= 0.5) == (bundled["diagnosis"] == "malignant"))
    assert accuracy > 0.9


def test_prefect_artifacts_published(three_runs) -> None:

    from prefect.artifacts import Artifact

    table = Artifact.get("grid-results")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["lambda"] for row in rows] == ["0", "1e-02", "1e-01"]
    assert sum(row["chosen"] == "✔" for row in rows) == 1
    profile = Artifact.get("data-profile")
    rows = json.loads(profile.data) if isinstance(profile.data, str) else profile.data
    assert len(rows) == 3 * 30 and {row["split"] for row in rows} == {"train", "validation", "test"}
    summary = Artifact.get("pipeline-summary")
    assert "**Chosen**: l2 λ=" in summary.data and "@challenger" in summary.data
