"""Small real models for registry and scoring tests: trained in a second, logged like the pipeline does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["a", "b", "c", "d"]
SIGNAL = ["a", "b", "c"]


def labelled_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Four numeric columns; the label depends on a, b and c only (d is noise)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(COLUMNS)))
    label = (features[:, :3] @ np.array([1.5, -1.0, 0.8]) + rng.normal(scale=0.4, size=rows) > 0).astype(int)
    return pd.DataFrame(features, columns=COLUMNS).assign(y=label)


def train_keras(
    frame: pd.DataFrame, path: Path, *, features: list[str] = SIGNAL, epochs: int = 60, flip: bool = False
) -> str:
    """Fit the reference network full-batch; ``flip`` learns the opposite label (a bad model)."""
    from wd_pipeline.ml.network import build_model

    x = frame[features].to_numpy(np.float32)
    y = (1 - frame["y"] if flip else frame["y"]).to_numpy(np.float32).reshape(-1, 1)
    network = build_model(x, lam=0.0, hidden_units=(8,), learning_rate=0.05, seed=0)
    if epochs:
        network.fit(x, y, epochs=epochs, batch_size=len(x), verbose=0)
    network.save(path)
    return str(path)


def log_pyfunc(
    keras_path: str, frame: pd.DataFrame, features: list[str], experiment: str = "gate-test"
) -> tuple[str, str]:
    """Log a keras file as the pipeline's pyfunc model in a fresh run; returns (model URI, run id)."""
    from wd_pipeline.tracking import registry, runs

    client = runs.get_client()
    run_id = client.create_run(runs.ensure_experiment(client, experiment)).info.run_id
    model_uri, _ = registry.log_model(run_id, keras_path, frame.head(5), features)
    return model_uri, run_id
