"""A grouped run on the protein-homology subset: no block on two sides of a split or fold, and never a model input."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from flows.pipeline import weight_decay_pipeline
from tests.helpers.stores import isolated_store
from wd_pipeline.config import default_work_dir
from wd_pipeline.data import splits
from wd_pipeline.ml.training import REFIT, fold_data

pytestmark = pytest.mark.slow

PROTEIN = Path(__file__).parents[2] / "data" / "protein.parquet"
MODEL = "wd-grouped"
FOLDS = 3
SEED = 42


@pytest.fixture(scope="module")
def grouped_run(prefect_api, tmp_path_factory):
    with isolated_store(tmp_path_factory.mktemp("grouped")):
        state = weight_decay_pipeline(
            data=str(PROTEIN),
            label="target",
            positive_class=None,
            group_column="block",
            grid=[0.0, 1e-3],
            modes=["l2"],
            folds=FOLDS,
            epochs=8,
            patience=3,
            seed=SEED,
            model_name=MODEL,
            experiment="grouped",
            return_state=True,
        )
        folder = next((Path(default_work_dir()) / "splits").glob(f"*/{splits.MANIFEST}")).parent
        yield state, folder


def blocks(part: splits.LabeledData) -> set[float]:
    return set(part.carried["block"].tolist())


def test_the_run_completes(grouped_run) -> None:
    state, _ = grouped_run
    assert state.is_completed(), state
    assert state.result().registry.version is not None


def test_no_block_is_stored_in_two_splits_and_the_manifest_counts_them(grouped_run) -> None:
    _, folder = grouped_run
    stored = {name: blocks(splits.load_split(folder, name)) for name in splits.SPLITS}
    assert not stored["train"] & stored["validation"]
    assert not stored["train"] & stored["test"]
    assert not stored["validation"] & stored["test"]
    manifest = splits.read_manifest(folder)
    assert manifest["group_column"] == "block"
    assert {name: manifest["splits"][name]["groups"] for name in splits.SPLITS} == {
        name: len(found) for name, found in stored.items()
    }
    assert sum(len(found) for found in stored.values()) == len(set(pq.read_table(PROTEIN)["block"].to_pylist()))
    assert "block" not in manifest["features"] and "block" in pq.read_schema(folder / "test.parquet").names


def test_every_fold_keeps_each_block_on_one_side(grouped_run) -> None:
    _, folder = grouped_run
    development = blocks(splits.load_split(folder, "train")) | blocks(splits.load_split(folder, "validation"))
    validated: set[float] = set()
    for fold in range(FOLDS):
        train, validation = fold_data(folder, FOLDS, fold, SEED)
        assert validation is not None
        assert not blocks(train) & blocks(validation)
        validated |= blocks(validation)
    assert validated == development
    refit, _ = fold_data(folder, FOLDS, REFIT, SEED)
    assert blocks(refit) == development


def test_the_block_is_not_a_model_input(grouped_run) -> None:
    inputs = [column.name for column in mlflow.models.get_model_info(f"models:/{MODEL}/1").signature.inputs.inputs]
    assert "block" not in inputs
    assert len(inputs) == 74 and inputs[0] == "f4"
