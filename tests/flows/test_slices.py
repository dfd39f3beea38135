"""Sliced evaluation and permutation importance through the whole pipeline, on a table built with a weak slice.

The label follows ``signal`` and ``colour`` everywhere, but in region ``south`` a third of
the labels are flipped, so the model (which never sees ``region``: slice columns are not
features) ranks that region's rows worse; region ``island`` is worse still but too small to
name. ``noise`` carries nothing.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.stores import isolated_store

pytestmark = pytest.mark.slow

MODEL = "wd-sliced"
FLOOR = 0.8


def sliced_table(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    colour = rng.choice(["red", "green", "blue"], size=rows)
    region = rng.choice(["north", "south", "island"], p=[0.48, 0.47, 0.05], size=rows)
    age = rng.uniform(18, 90, size=rows).round()
    score = 2.0 * signal + 1.0 * (colour == "red") - 1.0 * (colour == "blue") + rng.normal(scale=0.4, size=rows)
    label = (score > 0).astype(int)
    flipped = ((region == "south") & (rng.random(rows) < 0.33)) | ((region == "island") & (rng.random(rows) < 0.6))
    label = np.where(flipped, 1 - label, label)
    return pd.DataFrame(
        {
            "signal": signal,
            "colour": colour,
            "noise": rng.normal(size=rows),
            "region": region,
            "age": age,
            "y": label,
        }
    )


@pytest.fixture(scope="module")
def sliced_run(prefect_api, tmp_path_factory):
    with isolated_store(tmp_path_factory.mktemp("sliced")) as folder:
        source = folder / "regions.csv"
        sliced_table().to_csv(source, index=False)
        state = weight_decay_pipeline(
            data=str(source),
            label="y",
            slice_by=["region", "age"],
            min_slice_roc_auc=FLOOR,
            importance_repeats=3,
            grid=[0.0],
            epochs=30,
            folds=1,
            patience=0,
            bootstrap_samples=200,
            model_name=MODEL,
            return_state=True,
        )
        assert state.type.value == "COMPLETED", state.message
        yield folder, state.result()


def table_artifact(run_id: str, path: str) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    with open(local) as file:
        return pd.read_json(file, orient="split")


def test_the_store_holds_slice_and_importance_tables_for_the_named_columns(sliced_run) -> None:
    _, summary = sliced_run
    slices = table_artifact(summary.parent_run_id, "slices/slices.json")
    assert set(slices["column"]) == {"region", "age"}
    assert set(slices.loc[slices["column"] == "region", "slice"]) == {"island", "north", "south"}
    assert len(slices[slices["column"] == "age"]) == 4  # quartile bins of the training ages
    assert slices.groupby("column")["rows"].sum().nunique() == 1  # each column's slices cover the test split once
    island = slices[slices["slice"] == "island"].iloc[0]
    assert bool(island["small"]) and not bool(island["worst"])
    worst = slices[slices["worst"]]
    assert list(worst["slice"]) == ["south"]

    importance = table_artifact(summary.parent_run_id, "importance/importance.json")
    assert importance["column"].iloc[0] == "signal"
    assert sorted(importance["column"]) == ["colour", "noise", "signal"]  # raw columns, the category once
    assert "region" not in set(importance["column"])  # slice columns are never features
    noise = importance[importance["column"] == "noise"].iloc[0]
    assert abs(noise["roc_auc_drop"]) < 0.02

    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(summary.parent_run_id, "plots")}
    assert {"plots/slices.png", "plots/importance.png"} <= logged
    assert client.get_run(summary.parent_run_id).data.tags["slices.worst"] == "region=south"


def test_the_card_and_the_summary_show_the_slices_and_the_columns(sliced_run) -> None:
    _, summary = sliced_run
    card = summary.evaluation.model_card
    assert "## Slices" in card and "**Worst slice**: `region=south`" in card
    assert "| region | island |" in card and "small (< 30 rows)" in card
    assert "## Which columns matter" in card and "| 1 | signal |" in card
    assert summary.evaluation.slices.worst.name == "region=south"
    assert summary.evaluation.slices.worst_text().startswith("region=south: roc_auc ")


def test_the_slice_floor_makes_a_challenger_naming_the_slice(sliced_run) -> None:
    _, summary = sliced_run
    decision = summary.registry
    south = summary.evaluation.slices.worst
    assert south.roc_auc.estimate < FLOOR
    assert decision.alias == "challenger" and decision.champion_version is None
    assert "slice region=south roc_auc" in decision.reason and f"< minimum {FLOOR:g}" in decision.reason
    assert "island" not in decision.reason  # too small for the floor


def test_prefect_table_artifacts_exist(sliced_run) -> None:
    from prefect.artifacts import Artifact

    slices = Artifact.get("slice-metrics")
    rows = json.loads(slices.data) if isinstance(slices.data, str) else slices.data
    assert {(row["column"], row["slice"]) for row in rows} >= {("region", "south"), ("region", "north")}
    importance = Artifact.get("permutation-importance")
    rows = json.loads(importance.data) if isinstance(importance.data, str) else importance.data
    assert rows[0]["column"] == "signal"
