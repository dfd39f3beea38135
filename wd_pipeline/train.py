"""Train one grid point, or find it already trained.

A grid point's result is stored under a key made of the split folder (itself keyed by the
data's sha256 and split settings), the training settings and λ. The result file is written
last, after the model, so its presence means the point is complete: a rerun after a crash
picks up every finished point and trains only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wd_pipeline import data as data_lib
from wd_pipeline.config import PipelineConfig
from wd_pipeline.evaluate import classification_metrics

RESULT_FILE = "result.json"
MODEL_FILE = "model.keras"
# Per-epoch series Keras reports; ``bce`` is the data term alone, ``loss`` adds the penalty.
HISTORY_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy", "bce", "val_bce")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class PointResult:
    """Everything the evaluation and the tracking store need about one trained λ."""

    lam: float
    key: str
    model_path: str
    history: dict[str, list[float]]
    train_metrics: dict[str, float]
    val_metrics: dict[str, float]
    weight_norm: float
    penalized_weight_norm: float
    penalty: float
    train_seconds: float
    resumed: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PointResult:
        return cls(**raw)

    def row(self) -> dict[str, float]:
        """The grid-table row: λ, train_* and val_* metrics, norms."""
        return {
            "lambda": self.lam,
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
            **{f"val_{k}": v for k, v in self.val_metrics.items()},
            "weight_norm": self.weight_norm,
            "penalized_weight_norm": self.penalized_weight_norm,
            "penalty": self.penalty,
            "train_seconds": self.train_seconds,
        }


def point_key(split_folder: str | Path, config: PipelineConfig, lam: float) -> str:
    """Content key of one grid point: same data, same settings, same λ ⇒ same model."""
    payload = json.dumps(
        {"splits": Path(split_folder).name, "training": config.training_key(), "lambda": repr(float(lam))},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def point_folder(config: PipelineConfig, key: str, work_dir: str | Path | None = None) -> Path:
    return Path(work_dir or config.work_dir) / "points" / key


def load_finished(folder: Path) -> PointResult | None:
    """The stored result of a completed grid point, or None if it never finished."""
    result_file = folder / RESULT_FILE
    if not (result_file.exists() and (folder / MODEL_FILE).exists()):
        return None
    result = PointResult.from_dict(json.loads(result_file.read_text()))
    result.resumed = True
    return result


def train_point(
    split_folder: str | Path, config: PipelineConfig, lam: float, work_dir: str | Path | None = None
) -> PointResult:
    """Train the reference network at ``lam`` unless this exact point was already trained."""
    key = point_key(split_folder, config, lam)
    folder = point_folder(config, key, work_dir)
    finished = load_finished(folder)
    if finished is not None:
        return finished

    import tensorflow as tf

    from wd_pipeline import model as model_lib

    train = data_lib.load_split(split_folder, "train")
    validation = data_lib.load_split(split_folder, "validation")
    x_train, y_train = _arrays(train)
    x_val, y_val = _arrays(validation)

    started = time.perf_counter()
    network = model_lib.build_model(
        x_train, lam=lam, hidden_units=config.hidden_units, learning_rate=config.learning_rate, seed=config.seed
    )
    batches = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    validation_batches = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(4096).cache()
    history = network.fit(batches, validation_data=validation_batches, epochs=config.epochs, verbose=0)
    seconds = time.perf_counter() - started

    result = PointResult(
        lam=float(lam),
        key=key,
        model_path=str((folder / MODEL_FILE).resolve()),
        history={k: [float(v) for v in history.history[k]] for k in HISTORY_KEYS if k in history.history},
        train_metrics=classification_metrics(y_train, _predict(network, x_train)),
        val_metrics=classification_metrics(y_val, _predict(network, x_val)),
        weight_norm=model_lib.weight_norm(network),
        penalized_weight_norm=model_lib.weight_norm(network, penalized_only=True),
        penalty=model_lib.penalty(network),
        train_seconds=seconds,
        settings={"lambda": float(lam), "keras_l2": model_lib.keras_l2(lam), **config.training_key()},
    )
    _save(network, result, folder)
    return result


def _arrays(part: data_lib.LabeledData) -> tuple[np.ndarray, np.ndarray]:
    return part.features.to_numpy(dtype=np.float32), part.label.astype(np.float32).reshape(-1, 1)


def _predict(network: Any, features: np.ndarray) -> np.ndarray:
    return np.asarray(network.predict(features, batch_size=4096, verbose=0)).ravel()


def _save(network: Any, result: PointResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    network.save(folder / MODEL_FILE)
    tmp = folder / f"{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(folder / RESULT_FILE)
