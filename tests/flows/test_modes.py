"""Three regularisation modes side by side through the whole pipeline, and a dropout champion."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.stores import isolated_store

pytestmark = pytest.mark.slow

GRID = [0.0, 1e-2]
DROPOUT_GRID = [0.0, 0.3]
FOLDS = 2


def run(model_name: str, **overrides):
    params = {
        "grid": GRID,
        "dropout_grid": DROPOUT_GRID,
        "epochs": 12,
        "folds": FOLDS,
        "patience": 0,
        "bootstrap_samples": 100,
        "model_name": model_name,
        **overrides,
    }
    return weight_decay_pipeline(**params, return_state=True)


@pytest.fixture(scope="module")
def runs(prefect_api, tmp_path_factory):
    """Three modes on tiny grids; then dropout alone over one rate, so that dropout must win."""
    with isolated_store(tmp_path_factory.mktemp("modes")) as folder:
        three = run("wd-three", modes=["l2", "decoupled", "dropout"])
        dropout = run("wd-dropout", modes=["dropout"], dropout_grid=[0.3])
        yield folder, three.result(), dropout.result()


def child_runs(client: MlflowClient, summary, parent_run_id: str | None = None) -> list:
    parent = parent_run_id or summary.parent_run_id
    return client.search_runs([summary.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_three_modes_register_a_champion_whose_card_shows_every_curve(runs, tmp_path) -> None:
    _, three, _ = runs
    assert three.registry.alias == "champion"
    client = MlflowClient()
    points = {run.info.run_name: run for run in child_runs(client, three) if not run.info.run_name.startswith("refit")}
    assert sorted(points) == sorted(
        ["l2 λ=0", "l2 λ=1e-02", "decoupled λ=0", "decoupled λ=1e-02", "dropout p=0", "dropout p=0.3"]
    )
    assert points["dropout p=0.3"].data.params == {"mode": "dropout", "rate": "0.3"}
    folds = child_runs(client, three, points["dropout p=0.3"].info.run_id)
    assert {run.data.params["dropout_rate"] for run in folds} == {"0.3"}
    assert {run.data.params["lambda"] for run in folds} == {"0.0"}

    parent = client.get_run(three.parent_run_id)
    plots = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "plots/validation_curve.png",
        "plots/validation_curve_dropout.png",
        "plots/weight_norm_dropout.png",
    } <= plots
    card = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="model_card.md"))
    compared = card.read_text().split("## Regularisation modes compared", 1)[1]
    for mode, value in three.evaluation.selection.per_mode.items():
        assert f"- **{mode}** (" in compared  # the mode's validation curve, value by value
        assert f"| {mode} | {mode} " in compared
        assert parent.data.tags[f"selection.{mode}.{'rate' if mode == 'dropout' else 'lambda'}"] == str(value)
    assert "- **dropout** (p → val log loss): 0 → " in compared and ", 0.3 → " in compared
    version = client.get_model_version_by_alias("wd-three", "champion")
    assert version.run_id == parent.info.run_id  # the version's run holds the full card read above


def test_rate_zero_is_trained_once_and_shared_with_lambda_zero(runs) -> None:
    _, three, _ = runs
    client = MlflowClient()
    zero = [run for run in child_runs(client, three) if run.info.run_name in ("l2 λ=0", "decoupled λ=0", "dropout p=0")]
    resumed = sorted(
        fold.data.tags["resumed"] for point in zero for fold in child_runs(client, three, point.info.run_id)
    )
    assert resumed == ["false"] * FOLDS + ["true"] * 2 * FOLDS


def test_a_dropout_winner_is_refit_with_dropout_and_registered_with_its_rate(runs, tmp_path) -> None:
    _, _, dropout = runs
    selection = dropout.evaluation.selection
    assert (selection.mode, selection.lam, selection.label) == ("dropout", 0.3, "dropout p=0.3")
    client = MlflowClient()
    parent = client.get_run(dropout.parent_run_id)
    assert (parent.data.tags["selection.rate"], parent.data.tags["selection.dropout.rate"]) == ("0.3", "0.3")
    assert parent.data.metrics["chosen_dropout_rate"] == 0.3 and parent.data.metrics["chosen_lambda"] == 0.0
    (refit,) = [run for run in child_runs(client, dropout) if run.info.run_name.startswith("refit")]
    assert refit.info.run_name == "refit dropout p=0.3" and refit.data.params["dropout_rate"] == "0.3"
    version = client.get_model_version_by_alias("wd-dropout", "champion")
    assert "- **Mode**: dropout" in version.description and "- **Dropout rate p**: 0.3" in version.description
    folder = Path(mlflow.artifacts.download_artifacts("models:/wd-dropout@champion", dst_path=str(tmp_path)))
    (keras_file,) = folder.rglob("*.keras")
    with zipfile.ZipFile(keras_file) as archive:
        config = json.loads(archive.read("config.json"))
    rates = [layer["config"]["rate"] for layer in config["config"]["layers"] if layer["class_name"] == "Dropout"]
    assert rates == [0.3, 0.3]
