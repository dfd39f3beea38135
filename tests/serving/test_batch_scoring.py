"""Scoring a file batch by batch gives what scoring it all at once gives: predictions, shares, metrics and drift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers.networks import LABEL, MIXED_FEATURES, MIXED_ONE_HOT_MAX, MixedTable, frame_schema, mixed_table
from tests.helpers.registry_models import register_champion, train_keras
from wd_pipeline.data import sources
from wd_pipeline.data.drift import compare
from wd_pipeline.data.profile import SplitProfile, profile_columns
from wd_pipeline.data.validation import conform, encode_label
from wd_pipeline.ml.metrics import classification_metrics
from wd_pipeline.ml.preprocessing import Preprocessing
from wd_pipeline.serving.scoring import input_report, make_score_settings, model_columns, predictions, score_file
from wd_pipeline.tracking import registry, runs

NAME = "batch-score-model"
TRAIN = 200
ROWS = 1000  # scored: several times the batch size
BATCH = 128


@pytest.fixture(scope="module")
def table() -> MixedTable:
    return mixed_table(rows=TRAIN + ROWS, seed=21)


@pytest.fixture(scope="module")
def champion(module_store: Path, tmp_path_factory, table: MixedTable) -> str:
    """A registered champion logged with its training split's profile, so scoring also measures drift."""
    train = table.rows(0, TRAIN).frame
    keras_file = train_keras(
        train,
        tmp_path_factory.mktemp("keras") / "model",
        features=MIXED_FEATURES,
        epochs=20,
        one_hot_max=MIXED_ONE_HOT_MAX,
    )
    schema = frame_schema(train, MIXED_FEATURES)
    conformed = conform(pa.Table.from_pandas(train, preserve_index=False), schema)
    reference = SplitProfile(
        "train", TRAIN, profile_columns(conformed, schema, reference=True), float(train[LABEL].mean())
    )
    client = runs.get_client()
    run_id = client.create_run(runs.ensure_experiment(client, "batch-gate")).info.run_id
    prep = Preprocessing.load(Path(keras_file).parent)
    model_uri, _ = registry.log_model(run_id, keras_file, prep, schema, train.head(5), reference=reference)
    return register_champion(NAME, model_uri, run_id, train[MIXED_FEATURES], train[LABEL].to_numpy()).version


def new_rows(table: MixedTable) -> pd.DataFrame:
    """Rows to score with an ID, gaps, unseen categories, and a label missing in some rows."""
    rows = table.rows(TRAIN, TRAIN + ROWS).frame
    rows.loc[rows.index % 7 == 0, "colour"] = "purple"
    rows.loc[rows.index % 13 == 0, "city"] = "city-new"
    rows.insert(0, "id", [f"row-{i:04d}" for i in range(ROWS)])
    return rows.assign(**{LABEL: rows[LABEL].astype("Int64").mask(rows.index % 10 == 3)})


def in_memory(path: Path, threshold: float = 0.5):
    """Today's whole-file path: every row read, conformed, predicted and counted at once."""
    model_uri = f"models:/{NAME}/1"
    table = sources.parse_source(sources.read_source(sources.locate(str(path)))).table
    frame = model_columns(table, registry.input_schema(model_uri), f"{NAME} v1")
    probability = registry.model_probability(model_uri, frame)
    scored = predictions(frame, probability, threshold)
    column = table.column(LABEL)
    known = pc.is_valid(column)
    y = encode_label(pc.filter(column, known), LABEL, None)
    metrics = classification_metrics(y, probability[known.to_numpy(zero_copy_only=False)], threshold)
    from wd_pipeline.tracking.drift_record import model_reference

    current = pa.Table.from_pandas(frame[MIXED_FEATURES], preserve_index=False)
    drift = compare(
        model_reference(model_uri),
        current,
        warn=0.1,
        alert=0.25,
        reference_name=f"{NAME} v1",
        label=LABEL,
        current_label=y,
    )
    return scored, input_report(frame, registry.model_preprocessing(model_uri)), metrics, drift


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_a_file_larger_than_a_batch_scores_as_it_does_all_at_once(
    champion: str, module_store: Path, table: MixedTable, kind: str
) -> None:
    rows = new_rows(table)
    path = module_store / f"large.{kind}"
    if kind == "parquet":
        rows.to_parquet(path, index=False, row_group_size=300)  # row groups that straddle the batches
    else:
        rows.to_csv(path, index=False)
    output = module_store / f"scored-{kind}.parquet"
    result = score_file(
        make_score_settings(data=str(path), output=str(output), model_name=NAME, experiment="batches"),
        batch_rows=BATCH,
    )
    expected, inputs, metrics, drift = in_memory(path)

    # The batch path ran: one row group per batch.
    assert pq.ParquetFile(output).metadata.num_row_groups == math.ceil(ROWS / BATCH)
    expected.to_parquet(module_store / f"whole-{kind}.parquet", index=False)  # as the whole-file path wrote it
    written, whole = pd.read_parquet(output), pd.read_parquet(module_store / f"whole-{kind}.parquet")
    assert list(written.columns) == list(whole.columns)
    pd.testing.assert_frame_equal(written, whole, check_dtype=False, check_exact=False, rtol=1e-6)
    assert result.rows == ROWS
    assert result.positive_rate == pytest.approx(expected["label"].mean())
    assert result.inputs.keys() == inputs.keys()
    for name, shares in inputs.items():
        assert result.inputs[name] == pytest.approx(shares)
    assert result.inputs["colour"]["unseen"] > 0.1
    assert result.metrics == pytest.approx(metrics)
    assert result.drift is not None
    assert result.drift.current_rows == ROWS
    assert result.drift == drift
    logged = runs.get_client().get_run(result.run_id).data.metrics
    assert logged["mean_probability"] == pytest.approx(expected["probability"].mean())


def test_a_bad_value_in_a_later_batch_fails_the_run_and_leaves_no_output(
    champion: str, module_store: Path, table: MixedTable
) -> None:
    rows = new_rows(table)
    rows.loc[ROWS - 5, "income"] = np.inf  # in the last batch only
    path = module_store / "late-inf.parquet"
    rows.to_parquet(path, index=False)
    output = module_store / "never.parquet"
    with pytest.raises(Exception, match=r"numeric columns hold infinite values \(column: count\) \{'income': 1\}"):
        score_file(
            make_score_settings(data=str(path), output=str(output), model_name=NAME, experiment="late"),
            batch_rows=BATCH,
        )
    assert not output.exists()
    assert not list(module_store.glob(".never.parquet*"))
    client = runs.get_client()
    failed = client.search_runs([client.get_experiment_by_name("late").experiment_id])
    assert [run.info.status for run in failed] == ["FAILED"]
