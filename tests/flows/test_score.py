"""Batch scoring with the registered champion: validation, predictions, the MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.registry_models import SIGNAL, labelled_frame, log_pyfunc, train_keras
from wd_pipeline.config import make_config
from wd_pipeline.errors import DataError, TrackingError
from wd_pipeline.serving.scoring import make_score_settings, score_file
from wd_pipeline.tracking import registry, runs

NAME = "score-model"


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> str:
    return train_keras(labelled_frame(200), tmp_path_factory.mktemp("keras") / "model.keras", epochs=30)


@pytest.fixture(scope="module")
def champion(module_store: Path, keras_file: str) -> str:
    frame = labelled_frame(200)
    model_uri, run_id = log_pyfunc(keras_file, frame, SIGNAL)
    client = runs.get_client()
    decision = registry.register(
        client,
        name=NAME,
        model_uri=model_uri,
        run_id=run_id,
        test_features=frame[SIGNAL],
        test_label=frame["y"].to_numpy(),
        policy=registry.GatePolicy.from_config(make_config()),
    )
    assert decision.alias == "champion"
    return decision.version


def settings(data: Path, output: Path, experiment: str = "scoring", **more):
    return make_score_settings(data=str(data), output=str(output), model_name=NAME, experiment=experiment, **more)


def test_predictions_keep_features_and_add_probability_and_label(champion: str, module_store: Path) -> None:
    new = labelled_frame(50, seed=7)[SIGNAL[::-1]]  # columns in another order are fine
    new.to_csv(module_store / "new.csv", index=False)
    result = score_file(settings(module_store / "new.csv", module_store / "out" / "predictions.parquet", threshold=0.7))

    written = pd.read_parquet(result.output)
    assert list(written.columns) == [*SIGNAL, "probability", "label"]
    assert len(written) == result.rows == 50
    assert written["probability"].between(0, 1).all()
    np.testing.assert_array_equal(written["label"], (written["probability"] >= 0.7).astype(int))
    pd.testing.assert_frame_equal(written[SIGNAL], new[SIGNAL].astype("float64"))
    assert result.positive_rate == pytest.approx(written["label"].mean())


def test_scoring_run_is_recorded_in_mlflow(champion: str, module_store: Path) -> None:
    labelled_frame(30, seed=3)[SIGNAL].to_parquet(module_store / "new.parquet")
    result = score_file(settings(module_store / "new.parquet", module_store / "p.parquet"))
    run = runs.get_client().get_run(result.run_id)
    assert run.info.run_name == f"score {NAME}@champion v{champion}"
    assert run.info.status == "FINISHED"
    assert run.data.params["model_uri"] == f"models:/{NAME}/{champion}" == result.model_uri
    assert run.data.params["model_version"] == champion
    assert run.data.params["input_sha256"] == result.input_sha256 and len(result.input_sha256) == 64
    assert run.data.metrics["rows"] == 30 and run.data.metrics["positive_rate"] == pytest.approx(result.positive_rate)
    experiment = runs.get_client().get_experiment(run.info.experiment_id)
    assert experiment.name == "scoring"


@pytest.mark.parametrize(
    ("case", "mutate", "message"),
    [
        (
            "columns",
            lambda f: f.rename(columns={"c": "z"}).assign(extra=1.0),
            f"columns do not match the input signature of {NAME} v1: missing ['c'], unexpected ['z', 'extra']. "
            "The model takes exactly ['a', 'b', 'c']",
        ),
        (
            "text",
            lambda f: f.assign(b="x"),
            f"feature columns must be numeric for {NAME} v1; non-numeric: ['b (string)']",
        ),
        (
            "nan",
            lambda f: f.assign(a=[np.nan] + [1.0] * (len(f) - 1)),
            "feature columns hold missing or infinite values (column: count) {'a': 1}: clean or drop those rows",
        ),
    ],
)
def test_a_file_that_does_not_fit_the_signature_is_refused(
    champion: str, module_store: Path, case: str, mutate, message: str
) -> None:
    path = module_store / f"bad-{case}.csv"
    mutate(labelled_frame(20)[SIGNAL]).to_csv(path, index=False)
    with pytest.raises(DataError) as caught:
        score_file(settings(path, module_store / "never.parquet", experiment=f"bad {case}"))
    assert str(caught.value) == message
    assert not (module_store / "never.parquet").exists()
    failed = runs.get_client().search_runs([runs.get_client().get_experiment_by_name(f"bad {case}").experiment_id])
    assert [run.info.status for run in failed] == ["FAILED"]


def test_no_champion_is_a_clear_error(module_store: Path) -> None:
    labelled_frame(10)[SIGNAL].to_csv(module_store / "unscored.csv", index=False)
    with pytest.raises(TrackingError, match="model 'never-registered' has no @champion version"):
        score_file(
            make_score_settings(
                data=str(module_store / "unscored.csv"),
                output=str(module_store / "x.parquet"),
                model_name="never-registered",
            )
        )


@pytest.mark.slow
def test_score_flow_through_prefect(champion: str, module_store: Path, prefect_api) -> None:
    from flows.score import score

    labelled_frame(25, seed=5)[SIGNAL].to_csv(module_store / "flow.csv", index=False)
    state = score(
        data=str(module_store / "flow.csv"),
        output=str(module_store / "flow.parquet"),
        model_name=NAME,
        experiment="scoring",
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    run = runs.get_client().get_run(result.run_id)
    assert run.data.tags[runs.PREFECT_RUN_TAG] == str(state.state_details.flow_run_id)
    assert len(pd.read_parquet(result.output)) == 25
