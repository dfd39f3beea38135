"""--threshold auto on a rare positive class: chosen out of fold, kept with the model, used wherever it labels."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.model_server import invoke, served_model
from tests.helpers.stores import isolated_store
from wd_pipeline.config import default_work_dir
from wd_pipeline.data import splits
from wd_pipeline.ml.metrics import classification_metrics
from wd_pipeline.ops import stack
from wd_pipeline.serving.scoring import make_score_settings, score_file
from wd_pipeline.tracking import registry

pytestmark = pytest.mark.slow

MODEL = "rare-positive-model"
CHAMPION = f"models:/{MODEL}@champion"
FEATURES = ["dose", "load", "site"]


def rare_positives(rows: int, seed: int) -> pd.DataFrame:
    """About 5 % positives, driven by two numbers and a category: a model trained on log loss rarely says > 0.5."""
    rng = np.random.default_rng(seed)
    dose, load = rng.normal(size=rows), rng.normal(size=rows)
    site = rng.choice(["north", "south", "east"], size=rows)
    logit = -4.3 + 1.4 * dose + 0.9 * load + np.where(site == "east", 0.8, 0.0)
    label = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"dose": dose, "load": load, "site": site, "event": np.where(label, "yes", "no")})


@pytest.fixture(scope="module")
def trained(prefect_api, tmp_path_factory):
    with isolated_store(tmp_path_factory.mktemp("threshold")) as folder:
        source = folder / "events.csv"
        table = rare_positives(2000, seed=11)
        assert 0.03 < (table["event"] == "yes").mean() < 0.08
        table.to_csv(source, index=False)
        state = weight_decay_pipeline(
            data=str(source),
            label="event",
            positive_class="yes",
            grid=[0.0, 1e-3],
            folds=2,
            epochs=30,
            patience=5,
            threshold="auto",
            threshold_metric="f1",
            selection_metric="average_precision",
            model_name=MODEL,
            experiment="threshold-auto",
            return_state=True,
        )
        yield folder, state.result()


def champion_threshold() -> float:
    return registry.model_config(CHAMPION)["threshold"]


def test_the_threshold_is_chosen_on_every_development_row_and_stored_with_the_model(trained) -> None:
    _, summary = trained
    chosen = summary.evaluation.threshold
    assert (chosen.metric, summary.registry.alias) == ("f1", "champion")
    assert chosen.value != 0.5 and 0 < chosen.value < 1
    manifest = splits.read_manifest(split_folder())
    development = manifest["splits"]["train"]["rows"] + manifest["splits"]["validation"]["rows"]
    assert chosen.rows == development  # two validation folds together: each development row once
    assert champion_threshold() == pytest.approx(chosen.value)
    run = MlflowClient().get_run(summary.parent_run_id)
    assert run.data.metrics["decision_threshold"] == pytest.approx(chosen.value)
    assert run.data.tags["threshold.metric"] == "f1"
    assert run.data.params["threshold"] == "auto"
    assert summary.registry.threshold == pytest.approx(chosen.value)


def test_test_metrics_and_card_are_at_the_chosen_threshold(trained) -> None:
    _, summary = trained
    value = summary.evaluation.threshold.value
    test = splits.load_split(split_folder(), "test")
    probability = registry.model_probability(CHAMPION, test.features)
    expected = classification_metrics(test.label, probability, value)
    run = MlflowClient().get_run(summary.parent_run_id)
    for name in ("f1", "recall", "accuracy", "average_precision"):
        assert run.data.metrics[f"test_{name}"] == pytest.approx(expected[name], abs=1e-6)
    assert expected["f1"] != classification_metrics(test.label, probability, 0.5)["f1"]
    card = MlflowClient().get_model_version(MODEL, summary.registry.version).description
    assert f"- **Threshold**: {value:.4g}, chosen by --threshold auto: maximum f1" in card
    assert f"threshold {value:g})" in card
    plots = {a.path for a in MlflowClient().list_artifacts(summary.parent_run_id, "plots")}
    assert "plots/precision_recall.png" in plots


def test_score_labels_at_the_stored_threshold_unless_one_is_given(trained) -> None:
    folder, _ = trained
    rare_positives(600, seed=12).to_csv(folder / "new.csv", index=False)
    value = champion_threshold()

    def scored(**threshold: float) -> pd.DataFrame:
        settings = make_score_settings(
            data=str(folder / "new.csv"),
            output=str(folder / f"scored-{threshold}.parquet"),
            model_name=MODEL,
            experiment="threshold-scoring",
            **threshold,
        )
        result = score_file(settings)
        assert (
            MlflowClient().get_run(result.run_id).data.params["threshold"] == f"{threshold.get('threshold', value):g}"
        )
        return pd.read_parquet(result.output)

    own, overridden = scored(), scored(threshold=0.5)
    np.testing.assert_array_equal(own["label"], (own["probability"] >= value).astype(int))
    np.testing.assert_array_equal(overridden["label"], (overridden["probability"] >= 0.5).astype(int))
    assert own["label"].sum() > overridden["label"].sum()  # the lower threshold calls more rows positive


def test_the_served_model_returns_a_label_at_the_stored_threshold(trained) -> None:
    folder, _ = trained
    value = champion_threshold()
    rows = rare_positives(200, seed=13)[FEATURES]
    local = mlflow.pyfunc.load_model(CHAMPION).predict(rows)
    np.testing.assert_array_equal(local["label"], (local["probability"] >= value).astype(int))
    assert (local["probability"] >= value).sum() > (local["probability"] >= 0.5).sum()
    with served_model(CHAMPION, env=stack.base_env(), cwd=folder, log=folder / "serve.log") as url:
        answers = invoke(url, FEATURES, rows.to_numpy().tolist())
    served = pd.DataFrame(answers)
    np.testing.assert_allclose(served["probability"], local["probability"], rtol=1e-5)
    np.testing.assert_array_equal(served["label"], local["label"])


def split_folder() -> Path:
    """The one split folder of the module's work folder (one table, one split)."""
    (manifest,) = (Path(default_work_dir()) / "splits").glob(f"*/{splits.MANIFEST}")
    return manifest.parent
