"""A raw table (ID, gaps, string categories, '?') through the whole pipeline, served as it is."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from benchmarks import baselines
from flows.pipeline import weight_decay_pipeline
from tests.helpers.model_server import invoke, served_model
from tests.helpers.stores import isolated_store
from tests.helpers.tables import LABEL, POSITIVE, raw_table
from wd_pipeline.config import default_work_dir
from wd_pipeline.data import splits
from wd_pipeline.ops import stack
from wd_pipeline.serving.scoring import make_score_settings, score_file

pytestmark = pytest.mark.slow

MODEL = "raw-table-model"
CHAMPION = f"models:/{MODEL}@champion"
RAW_COLUMNS = {"age": "double", "spend": "double", "city": "string", "plan": "string"}


@pytest.fixture(scope="module")
def trained(prefect_api, tmp_path_factory):
    """One pipeline run on a raw CSV: '?' declared missing, the ID excluded."""
    with isolated_store(tmp_path_factory.mktemp("raw")) as folder:
        source = folder / "customers.csv"
        raw_table(1200).to_csv(source, index=False)
        state = weight_decay_pipeline(
            data=str(source),
            label=LABEL,
            positive_class=POSITIVE,
            exclude=["customer_id"],
            na_values=["?"],
            grid=[0.0, 1e-3, 1e-2],
            folds=2,
            epochs=40,
            patience=5,
            model_name=MODEL,
            experiment="raw-tables",
            return_state=True,
        )
        yield folder, state


def test_the_run_completes_and_registers_a_champion(trained) -> None:
    _, state = trained
    assert state.type.value == "COMPLETED"
    assert state.result().registry.alias == "champion"


def test_the_signature_lists_every_raw_column_with_its_type(trained) -> None:
    info = mlflow.models.get_model_info(CHAMPION)
    assert {column.name: column.type.name for column in info.signature.inputs.inputs} == RAW_COLUMNS
    example = mlflow.models.Model.load(CHAMPION).load_input_example()
    assert example.isna().to_numpy().any(), "the input example shows that gaps are accepted"


def test_the_champion_scores_raw_rows_with_unseen_categories_and_gaps(trained) -> None:
    rows = pd.DataFrame(
        {
            "age": [30.0, np.nan, 70.0],
            "spend": [np.nan, 50.0, 20.0],
            "city": ["city-01", "atlantis", None],  # a city never seen in training, and a gap
            "plan": [None, "basic", "enterprise"],
        }
    )
    probability = mlflow.pyfunc.load_model(CHAMPION).predict(rows)["probability"].to_numpy()
    assert probability.shape == (3,) and np.isfinite(probability).all()
    assert ((probability > 0) & (probability < 1)).all()


def test_mlflow_models_serve_takes_the_same_raw_rows(trained) -> None:
    folder, _ = trained
    columns = list(RAW_COLUMNS)
    rows = [[30.0, None, "city-01", None], [None, 50.0, "atlantis", "basic"], [70.0, 20.0, None, "enterprise"]]
    with served_model(CHAMPION, env=stack.base_env(), cwd=folder, log=folder / "serve.log") as url:
        served = np.array([p["probability"] for p in invoke(url, columns, rows)])
    frame = pd.DataFrame(rows, columns=columns).astype({"age": float, "spend": float})
    local = mlflow.pyfunc.load_model(CHAMPION).predict(frame)["probability"].to_numpy()
    np.testing.assert_allclose(served, local, rtol=1e-5)


def test_score_passes_other_columns_through_and_reports_gaps_unseen_and_labelled_metrics(trained) -> None:
    folder, _ = trained
    new = raw_table(300, seed=5)
    new.loc[:9, "city"] = "atlantis"
    new.to_csv(folder / "new.csv", index=False)
    settings = make_score_settings(
        data=str(folder / "new.csv"), output=str(folder / "scored.parquet"), model_name=MODEL, experiment="raw-scoring"
    )
    result = score_file(settings)
    scored = pd.read_parquet(result.output)
    assert list(scored.columns) == [*new.columns, "probability", "label"]
    assert scored["customer_id"].tolist() == new["customer_id"].tolist()
    assert scored[LABEL].tolist() == new[LABEL].tolist()
    assert result.inputs["city"]["unseen"] == pytest.approx(10 / 300)
    assert result.inputs["age"]["missing"] == pytest.approx(new["age"].isna().mean())
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["input.unseen.city"] == pytest.approx(10 / 300)
    assert 0.5 < metrics["labelled_roc_auc"] <= 1.0


def test_quality_is_within_a_few_points_of_logistic_regression_on_the_same_split(trained) -> None:
    _, state = trained
    split_folder = next((Path(default_work_dir()) / "splits").glob(f"*/{splits.MANIFEST}")).parent
    data = baselines.load(split_folder)
    (logistic,) = [
        baselines.evaluate(name, model, data)
        for name, model in baselines.models(data.categorical, data.numeric).items()
        if name.startswith("LogisticRegression")
    ]
    ours = state.result().evaluation.test_metrics["roc_auc"]
    assert ours >= logistic.roc_auc - 0.03, (ours, logistic.roc_auc)


def test_the_schema_artifact_and_model_card_show_what_was_learnt(trained) -> None:
    _, state = trained
    client = MlflowClient()
    run_id = state.result().parent_run_id
    paths = {artifact.path for artifact in client.list_artifacts(run_id, "schema")}
    assert paths == {"schema/inputs.json", "schema/inputs.md"}
    card = state.result().evaluation.model_card
    assert "## Inputs" in card and "| city | categorical |" in card and "median" in card
