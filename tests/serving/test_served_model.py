"""The logged model takes raw rows: every raw column in its signature, gaps and unseen categories accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import MIXED_FEATURES, MIXED_ONE_HOT_MAX, MixedTable, mixed_table
from tests.helpers.registry_models import log_pyfunc, register_champion, train_keras
from wd_pipeline.data.schema import ColumnSpec, Role
from wd_pipeline.ml.network import predict_frame
from wd_pipeline.ml.preprocessing import MISSING
from wd_pipeline.ml.training import load_model
from wd_pipeline.tracking import registry, runs


@pytest.fixture(scope="module")
def table() -> MixedTable:
    return mixed_table(rows=200, seed=6)


@pytest.fixture(scope="module")
def logged(module_store: Path, table: MixedTable) -> tuple[str, str]:
    """(version URI, network path) of a model trained on the first 150 rows, registered as the pipeline does.

    The gate scores the other 50 rows as a split holds them: ``age`` as int64, which MLflow's schema
    check refuses for a double column unless it is converted first.
    """
    train, test = table.rows(0, 150).frame, table.rows(150, 200)
    keras_path = train_keras(
        train, module_store / "mixed", features=MIXED_FEATURES, epochs=30, one_hot_max=MIXED_ONE_HOT_MAX
    )
    model_uri, run_id = log_pyfunc(keras_path, train, MIXED_FEATURES, experiment="served")
    decision = register_champion(
        "served-mixed", model_uri, run_id, test.features, test.frame["y"].to_numpy(), min_test_roc_auc=0.0
    )
    return decision.model_uri, keras_path


def raw_rows(table: MixedTable) -> pd.DataFrame:
    """Held-out rows as a user sends them: an unseen city and colour, gaps of every kind, a row of nothing."""
    rows = table.rows(150, 200).features.copy()
    rows.loc[0, "city"] = "city-never-seen"
    rows.loc[1, "colour"] = "purple"
    rows.loc[2, "income"] = np.nan
    rows.loc[3, "colour"] = None
    rows = rows.astype({"age": "float64"})
    rows.loc[4, ["income", "age", "colour", "city"]] = [np.nan, np.nan, None, None]
    return rows


def test_the_signature_lists_every_raw_column_with_its_type(logged) -> None:
    from mlflow.models import get_model_info

    signature = get_model_info(logged[0]).signature
    assert [(spec["name"], spec["type"]) for spec in signature.inputs.to_dict()] == [
        ("income", "double"),
        ("age", "double"),
        ("colour", "string"),
        ("city", "string"),
    ]
    assert [(spec["name"], spec["type"]) for spec in signature.outputs.to_dict()] == [
        ("probability", "double"),
        ("label", "long"),
    ]


def test_the_input_example_holds_a_missing_value(logged) -> None:
    import mlflow

    folder = mlflow.artifacts.download_artifacts(logged[0])
    example = mlflow.models.Model.load(folder).load_input_example(folder)
    assert list(example.columns) == MIXED_FEATURES
    assert example.isna().to_numpy().any()


def test_the_model_config_and_preprocessing_travel_with_the_model(logged, table: MixedTable) -> None:
    model_uri, keras_path = logged
    assert registry.input_schema(model_uri) == [
        ColumnSpec("income", Role.NUMERIC, "double"),
        ColumnSpec("age", Role.NUMERIC, "int64"),
        ColumnSpec("colour", Role.CATEGORICAL, "string"),
        ColumnSpec("city", Role.CATEGORICAL, "string"),
    ]
    config = registry.model_config(model_uri)
    assert (config["numeric_columns"], config["categorical_columns"]) == (["income", "age"], ["colour", "city"])
    assert (config["label"], config["positive_class"], config["missing_token"]) == ("y", None, MISSING)
    assert config["threshold"] == 0.5 == registry.model_threshold(model_uri)  # none chosen: the default
    assert registry.model_preprocessing(model_uri) == load_model(keras_path)[1]


def test_raw_rows_with_unseen_categories_and_gaps_predict_as_the_network_does(logged, table: MixedTable) -> None:
    model_uri, keras_path = logged
    rows = raw_rows(table)
    served = registry.model_probability(model_uri, rows)
    network, prep = load_model(keras_path)
    assert np.isfinite(served).all() and len(served) == len(rows)
    np.testing.assert_allclose(served, predict_frame(network, prep, rows), rtol=1e-5, atol=1e-6)
    # Columns the model does not read are ignored, and the order of the columns does not matter.
    shuffled = rows[MIXED_FEATURES[::-1]].assign(row_id=np.arange(len(rows)))
    np.testing.assert_allclose(registry.model_probability(model_uri, shuffled), served, rtol=1e-6)


def test_the_served_label_is_the_probability_at_the_models_own_threshold(logged, table: MixedTable) -> None:
    import mlflow

    from tests.helpers.networks import frame_schema
    from wd_pipeline.ml.preprocessing import Preprocessing

    _, keras_path = logged
    client = runs.get_client()
    run_id = client.create_run(runs.ensure_experiment(client, "served")).info.run_id
    train = table.rows(0, 150).frame
    model_uri, _ = registry.log_model(
        run_id,
        keras_path,
        Preprocessing.load(Path(keras_path).parent),
        frame_schema(train, MIXED_FEATURES),
        train.head(5),
        threshold=0.3,
    )
    assert registry.model_config(model_uri)["threshold"] == 0.3 == registry.model_threshold(model_uri)
    served = mlflow.pyfunc.load_model(model_uri).predict(raw_rows(table))
    assert list(served.columns) == ["probability", "label"]
    np.testing.assert_array_equal(served["label"], (served["probability"] >= 0.3).astype(int))
    assert served["label"].sum() > (served["probability"] >= 0.5).sum()  # the rows between 0.3 and 0.5 count
