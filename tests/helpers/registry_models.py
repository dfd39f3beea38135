"""Small real models for registry and scoring tests: trained in a second, logged like the pipeline does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tests.helpers.networks import LABEL, fit_full_batch, frame_schema

if TYPE_CHECKING:
    from wd_pipeline.tracking.registry import RegistryDecision

COLUMNS = ["a", "b", "c", "d"]
SIGNAL = ["a", "b", "c"]


def labelled_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Four numeric columns; the label depends on a, b and c only (d is noise)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(COLUMNS)))
    label = (features[:, :3] @ np.array([1.5, -1.0, 0.8]) + rng.normal(scale=0.4, size=rows) > 0).astype(int)
    return pd.DataFrame(features, columns=COLUMNS).assign(y=label)


def train_keras(
    frame: pd.DataFrame,
    folder: Path,
    *,
    features: list[str] = SIGNAL,
    epochs: int = 60,
    flip: bool = False,
    one_hot_max: int = 32,
) -> str:
    """Fit the reference network full-batch on the raw ``features`` (text columns categorical) and save it with
    its preprocessing in ``folder``, as a training unit is saved; ``flip`` learns the opposite label (a bad
    model). Returns the network's path."""
    from wd_pipeline.ml import preprocessing
    from wd_pipeline.ml.network import build_model
    from wd_pipeline.ml.training import MODEL_FILE

    prep = preprocessing.adapt(frame[features], frame_schema(frame, features), one_hot_max=one_hot_max)
    y = (1 - frame[LABEL] if flip else frame[LABEL]).to_numpy(np.float32).reshape(-1, 1)
    network = build_model(prep, lam=0.0, hidden_units=(8,), learning_rate=0.05, seed=0)
    fit_full_batch(network, preprocessing.model_inputs(frame, prep), y, epochs)
    folder.mkdir(parents=True, exist_ok=True)
    network.save(folder / MODEL_FILE)
    prep.save(folder)
    return str(folder / MODEL_FILE)


def log_pyfunc(
    keras_path: str,
    frame: pd.DataFrame,
    features: list[str],
    experiment: str = "gate-test",
    positive_class: str | None = None,
) -> tuple[str, str]:
    """Log a saved network and its preprocessing as the pipeline's pyfunc model in a fresh run; returns
    (model URI, run id). The label is ``y``, the columns' roles are read from ``frame``."""
    from wd_pipeline.ml.preprocessing import Preprocessing
    from wd_pipeline.tracking import registry, runs

    client = runs.get_client()
    run_id = client.create_run(runs.ensure_experiment(client, experiment)).info.run_id
    prep = Preprocessing.load(Path(keras_path).parent)
    schema = frame_schema(frame, features)
    model_uri, _ = registry.log_model(run_id, keras_path, prep, schema, frame.head(5), positive_class=positive_class)
    return model_uri, run_id


def register_champion(
    name: str, model_uri: str, run_id: str, features: pd.DataFrame, label: np.ndarray, **settings: object
) -> RegistryDecision:
    """Register a logged model through the pipeline's gate (its default policy, ``settings`` changing it) on
    ``features``/``label``, as the first version of ``name``: the decision, checked to be @champion."""
    from wd_pipeline.config import make_config
    from wd_pipeline.tracking import registry, runs

    decision = registry.register(
        runs.get_client(),
        name=name,
        model_uri=model_uri,
        run_id=run_id,
        test_features=features,
        test_label=label,
        policy=registry.GatePolicy.from_config(make_config(**settings)),
    )
    assert decision.alias == "champion", decision
    return decision
