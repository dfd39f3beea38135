"""Batch scoring with the registered champion: raw rows in, every column out, what was missing or unseen recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import LABEL, MIXED_FEATURES, MIXED_ONE_HOT_MAX, MixedTable, mixed_table
from tests.helpers.registry_models import log_pyfunc, register_champion, train_keras
from wd_pipeline.errors import DataError, TrackingError
from wd_pipeline.ml.metrics import METRICS, classification_metrics
from wd_pipeline.ml.network import predict_frame
from wd_pipeline.ml.training import load_model
from wd_pipeline.serving.scoring import make_score_settings, score_file
from wd_pipeline.tracking import runs

NAME = "score-model"
ROWS = 30


@pytest.fixture(scope="module")
def table() -> MixedTable:
    """200 training rows, then held-out rows to score."""
    return mixed_table(rows=200 + ROWS, seed=8)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory, table: MixedTable) -> str:
    return train_keras(
        table.rows(0, 200).frame,
        tmp_path_factory.mktemp("keras") / "model",
        features=MIXED_FEATURES,
        epochs=30,
        one_hot_max=MIXED_ONE_HOT_MAX,
    )


@pytest.fixture(scope="module")
def champion(module_store: Path, keras_file: str, table: MixedTable) -> str:
    train = table.rows(0, 200).frame
    model_uri, run_id = log_pyfunc(keras_file, train, MIXED_FEATURES)
    return register_champion(NAME, model_uri, run_id, train[MIXED_FEATURES], train[LABEL].to_numpy()).version


def new_rows(table: MixedTable) -> pd.DataFrame:
    """Held-out rows with an ID and the label, and known gaps: income missing in 3 rows, colour missing in 2
    and unseen ("purple") in 3, city unseen in 2; nothing else missing or new."""
    train = table.rows(0, 200).frame
    rows = table.rows(200, 200 + ROWS).frame
    rows = rows.assign(
        income=rows["income"].fillna(20.0),
        colour=rows["colour"].fillna("red"),
        city=train["city"].iloc[:ROWS].to_numpy(),  # cities training has seen
    )
    rows.loc[[0, 1, 2], "income"] = np.nan
    rows.loc[[3, 4], "colour"] = None
    rows.loc[[5, 6, 7], "colour"] = "purple"
    rows.loc[[8, 9], "city"] = "city-new"
    rows.insert(0, "id", [f"order-{i:03d}" for i in range(ROWS)])
    return rows


EXPECTED_INPUTS = {
    "income": {"missing": 3 / ROWS},
    "age": {"missing": 0.0},
    "colour": {"missing": 2 / ROWS, "unseen": 3 / ROWS},
    "city": {"missing": 0.0, "unseen": 2 / ROWS},
}


def settings(data: Path, output: Path, experiment: str = "scoring", **more):
    return make_score_settings(data=str(data), output=str(output), model_name=NAME, experiment=experiment, **more)


def test_output_is_every_input_column_plus_probability_and_label(
    champion: str, module_store: Path, table: MixedTable, keras_file: str
) -> None:
    rows = new_rows(table)
    rows = rows[["id", LABEL, *MIXED_FEATURES[::-1]]]  # columns in another order are fine
    rows.to_parquet(module_store / "new.parquet")
    result = score_file(
        settings(module_store / "new.parquet", module_store / "out" / "predictions.parquet", threshold=0.7)
    )

    written = pd.read_parquet(result.output)
    assert list(written.columns) == [*rows.columns, "probability", "label"]
    assert len(written) == result.rows == ROWS
    # The ID and the label pass through unchanged, so predictions join back to their rows.
    pd.testing.assert_series_equal(written["id"], rows["id"], check_dtype=False)
    pd.testing.assert_series_equal(written[LABEL], rows[LABEL])
    pd.testing.assert_frame_equal(written[["income", "age"]], rows[["income", "age"]].astype("float64"))
    assert written["colour"].tolist() == rows["colour"].tolist()  # gaps stay gaps
    # What the champion's network gives for these raw rows, unseen values and gaps included.
    network, prep = load_model(keras_file)
    np.testing.assert_allclose(written["probability"], predict_frame(network, prep, rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(written["label"], (written["probability"] >= 0.7).astype(int))
    assert result.positive_rate == pytest.approx(written["label"].mean())
    assert result.inputs == EXPECTED_INPUTS


def test_scoring_run_records_inputs_missing_unseen_and_labelled_metrics(
    champion: str, module_store: Path, table: MixedTable
) -> None:
    rows = new_rows(table)
    rows.to_parquet(module_store / "labelled.parquet")
    result = score_file(settings(module_store / "labelled.parquet", module_store / "p.parquet"))
    run = runs.get_client().get_run(result.run_id)
    assert run.info.run_name == f"score {NAME}@champion v{champion}"
    assert run.info.status == "FINISHED"
    assert run.data.params["model_uri"] == f"models:/{NAME}/{champion}" == result.model_uri
    assert run.data.params["model_version"] == champion
    assert run.data.params["input_sha256"] == result.input_sha256 and len(result.input_sha256) == 64
    metrics = run.data.metrics
    assert metrics["rows"] == ROWS and metrics["positive_rate"] == pytest.approx(result.positive_rate)
    shares = {key: value for key, value in metrics.items() if key.startswith("input.")}
    assert shares == pytest.approx(
        {f"input.{kind}.{column}": share for column, kinds in EXPECTED_INPUTS.items() for kind, share in kinds.items()}
    )
    # The label column was there: the champion's metrics on these rows, as an evaluation on new data.
    probability = pd.read_parquet(result.output)["probability"].to_numpy()
    expected = classification_metrics(rows[LABEL].to_numpy(), probability, 0.5)
    assert sorted(result.metrics) == sorted(METRICS)
    assert result.metrics == pytest.approx(expected)
    assert {key: value for key, value in metrics.items() if key.startswith("labelled_")} == pytest.approx(
        {f"labelled_{name}": value for name, value in expected.items()}
    )
    experiment = runs.get_client().get_experiment(run.info.experiment_id)
    assert experiment.name == "scoring"


def test_without_the_label_column_nothing_is_evaluated(champion: str, module_store: Path, table: MixedTable) -> None:
    new_rows(table).drop(columns=LABEL).to_parquet(module_store / "unlabelled.parquet")
    result = score_file(settings(module_store / "unlabelled.parquet", module_store / "u.parquet"))
    assert result.metrics == {}
    metrics = runs.get_client().get_run(result.run_id).data.metrics
    assert not [key for key in metrics if key.startswith("labelled_")]
    assert metrics["input.missing.income"] == pytest.approx(0.1)


def test_a_categorical_column_of_numbers_is_scored_as_unseen_text(
    champion: str, module_store: Path, table: MixedTable
) -> None:
    """Codes where the model learnt names: not refused (any value can be a category), reported as all unseen."""
    rows = new_rows(table).assign(colour=np.arange(ROWS))
    rows.to_parquet(module_store / "codes.parquet")
    result = score_file(settings(module_store / "codes.parquet", module_store / "c.parquet"))
    assert result.inputs["colour"] == {"missing": 0.0, "unseen": 1.0}
    assert pd.read_parquet(result.output)["colour"].tolist() == [str(i) for i in range(ROWS)]


def missing_column(rows: pd.DataFrame, folder: Path) -> Path:
    rows.drop(columns="colour").to_parquet(folder / "no-colour.parquet")
    return folder / "no-colour.parquet"


def text_in_numeric(rows: pd.DataFrame, folder: Path) -> Path:
    rows.assign(income=["x", *rows["income"].iloc[1:].astype(str)]).to_csv(folder / "text.csv", index=False)
    return folder / "text.csv"


def infinite(rows: pd.DataFrame, folder: Path) -> Path:
    rows.assign(income=[np.inf, *rows["income"].iloc[1:]]).to_parquet(folder / "inf.parquet")
    return folder / "inf.parquet"


def clash(rows: pd.DataFrame, folder: Path) -> Path:
    rows.assign(probability=0.5).to_parquet(folder / "clash.parquet")
    return folder / "clash.parquet"


@pytest.mark.parametrize(
    ("case", "write", "message"),
    [
        (
            "missing-column",
            missing_column,
            f"data lacks column(s) ['colour'] that {NAME} v1 reads; it reads ['income', 'age', 'colour', 'city']. "
            "Add them (an empty column means all values missing)",
        ),
        (
            "text",
            text_in_numeric,
            f"column 'income' holds string (e.g. 'x') but {NAME} v1 reads it as numeric: "
            "pass numbers, with empty cells for missing values",
        ),
        (
            "infinite",
            infinite,
            "numeric columns hold infinite values (column: count) {'income': 1}: clean or drop those rows",
        ),
        (
            "clash",
            clash,
            "input columns ['probability'] clash with the prediction columns ['probability', 'label']: rename them",
        ),
    ],
)
def test_a_file_the_model_cannot_read_is_refused_with_one_line(
    champion: str, module_store: Path, table: MixedTable, case: str, write, message: str
) -> None:
    path = write(new_rows(table), module_store)
    with pytest.raises(DataError) as caught:
        score_file(settings(path, module_store / "never.parquet", experiment=f"bad {case}"))
    assert str(caught.value) == message
    assert not (module_store / "never.parquet").exists()
    failed = runs.get_client().search_runs([runs.get_client().get_experiment_by_name(f"bad {case}").experiment_id])
    assert [run.info.status for run in failed] == ["FAILED"]


def test_no_champion_is_a_clear_error(module_store: Path, table: MixedTable) -> None:
    new_rows(table).to_parquet(module_store / "unscored.parquet")
    with pytest.raises(TrackingError, match="model 'never-registered' has no @champion version"):
        score_file(
            make_score_settings(
                data=str(module_store / "unscored.parquet"),
                output=str(module_store / "x.parquet"),
                model_name="never-registered",
            )
        )


@pytest.mark.slow
def test_score_flow_through_prefect(champion: str, module_store: Path, table: MixedTable, prefect_api) -> None:
    from flows.score import score

    new_rows(table).to_parquet(module_store / "flow.parquet")
    state = score(
        data=str(module_store / "flow.parquet"),
        output=str(module_store / "flow-out.parquet"),
        model_name=NAME,
        experiment="scoring",
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    run = runs.get_client().get_run(result.run_id)
    assert run.data.tags[runs.PREFECT_RUN_TAG] == str(state.state_details.flow_run_id)
    assert len(pd.read_parquet(result.output)) == ROWS
    assert result.inputs == EXPECTED_INPUTS
