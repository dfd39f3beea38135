"""Train one unit of the grid — (mode, λ, fold) — or find it already trained.

A unit's result is stored under a key made of the split folder (itself keyed by the data's
sha256 and split settings), the training settings, the mode, λ and the fold. The result
file is written last, after the model, so its presence means the unit is complete: a rerun
after a crash picks up every finished unit and trains only the rest.

Fold ``REFIT`` is the chosen point retrained on all training data (train + validation) for
the number of epochs early stopping found best across folds.
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
REFIT = -1
# Per-epoch series Keras reports; ``bce`` is the data term alone, ``loss`` adds the penalty.
HISTORY_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy", "bce", "val_bce")
EARLY_STOPPING_MONITOR = "val_bce"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class FitResult:
    """Everything evaluation and tracking need about one trained unit."""

    mode: str
    lam: float
    fold: int
    key: str
    model_path: str
    history: dict[str, list[float]]
    train_metrics: dict[str, float]
    val_metrics: dict[str, float]
    weight_norm: float
    penalized_weight_norm: float
    penalty: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    resumed: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FitResult:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def row(self) -> dict[str, Any]:
        """The per-fold table row: mode, λ, fold, train_* and val_* metrics, norms."""
        return {
            "mode": self.mode,
            "lambda": self.lam,
            "fold": self.fold,
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
            **{f"val_{k}": v for k, v in self.val_metrics.items()},
            "weight_norm": self.weight_norm,
            "penalized_weight_norm": self.penalized_weight_norm,
            "penalty": self.penalty,
            "stopped_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
        }


def effective_mode(mode: str, lam: float) -> str:
    """λ = 0 is the same model in every mode: one key, trained once."""
    return "none" if lam == 0 else mode


def unit_key(split_folder: str | Path, config: PipelineConfig, mode: str, lam: float, fold: int, epochs: int) -> str:
    """Content key of one unit: same data, settings, mode, λ and fold ⇒ same model."""
    payload = json.dumps(
        {
            "splits": Path(split_folder).name,
            "training": config.training_key(),
            "mode": effective_mode(mode, lam),
            "lambda": repr(float(lam)),
            "fold": fold,
            "epochs": epochs,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def unit_folder(config: PipelineConfig, key: str, work_dir: str | Path | None = None) -> Path:
    return Path(work_dir or config.work_dir) / "points" / key


def load_finished(folder: Path, mode: str) -> FitResult | None:
    """The stored result of a completed unit, or None if it never finished."""
    result_file = folder / RESULT_FILE
    if not (result_file.exists() and (folder / MODEL_FILE).exists()):
        return None
    result = FitResult.from_dict(json.loads(result_file.read_text()))
    result.resumed = True
    result.mode = mode  # a λ = 0 unit may have been trained under the other mode's name
    return result


def fold_data(
    split_folder: str | Path, folds: int, fold: int, seed: int
) -> tuple[data_lib.LabeledData, data_lib.LabeledData | None]:
    """Training and validation rows of one fold; the refit gets all training rows, no validation."""
    train = data_lib.load_split(split_folder, "train")
    validation = data_lib.load_split(split_folder, "validation")
    if folds == 1 and fold != REFIT:
        return train, validation
    development = data_lib.concat([train, validation])
    if fold == REFIT:
        return development, None
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_rows, val_rows = list(splitter.split(development.features, development.label))[fold]
    return data_lib.take(development, train_rows), data_lib.take(development, val_rows)


def train_unit(
    split_folder: str | Path,
    config: PipelineConfig,
    mode: str,
    lam: float,
    fold: int,
    *,
    epochs: int | None = None,
    work_dir: str | Path | None = None,
) -> FitResult:
    """Train the reference network for one (mode, λ, fold) unless it was already trained."""
    epochs = epochs or config.epochs
    key = unit_key(split_folder, config, mode, lam, fold, epochs)
    folder = unit_folder(config, key, work_dir)
    finished = load_finished(folder, mode)
    if finished is not None:
        return finished

    from wd_pipeline import model as model_lib

    train, validation = fold_data(split_folder, config.folds, fold, config.seed)
    x_train, y_train = _arrays(train)
    started = time.perf_counter()
    network = model_lib.build_model(
        x_train, lam=lam, mode=mode, hidden_units=config.hidden_units,
        learning_rate=config.learning_rate, seed=config.seed + max(fold, 0) * 101,
    )
    history, best_epoch = _fit(network, x_train, y_train, validation, config, epochs)
    seconds = time.perf_counter() - started

    val_metrics = {}
    if validation is not None:
        x_val, y_val = _arrays(validation)
        val_metrics = classification_metrics(y_val, _predict(network, x_val))
    result = FitResult(
        mode=mode,
        lam=float(lam),
        fold=fold,
        key=key,
        model_path=str((folder / MODEL_FILE).resolve()),
        history=history,
        train_metrics=classification_metrics(y_train, _predict(network, x_train)),
        val_metrics=val_metrics,
        weight_norm=model_lib.weight_norm(network),
        penalized_weight_norm=model_lib.weight_norm(network, penalized_only=True),
        penalty=model_lib.penalty(network),
        best_epoch=best_epoch,
        epochs_run=len(history.get("loss", [])),
        train_seconds=seconds,
        settings={
            "mode": mode,
            "lambda": float(lam),
            "keras_l2": model_lib.keras_l2(lam) if mode == "l2" else 0.0,
            "adamw_weight_decay": lam if mode == "decoupled" else 0.0,
            "fold": fold,
            **config.training_key(),
            "epochs": epochs,
        },
    )
    _save(network, result, folder)
    return result


def _fit(
    network: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    validation: data_lib.LabeledData | None,
    config: PipelineConfig,
    epochs: int,
) -> tuple[dict[str, list[float]], int]:
    """Fit with early stopping on validation cross-entropy (penalty excluded), best weights kept."""
    import keras
    import tensorflow as tf

    batches = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    callbacks = []
    validation_batches = None
    if validation is not None:
        x_val, y_val = _arrays(validation)
        validation_batches = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(4096).cache()
        if config.patience > 0:
            stopper = keras.callbacks.EarlyStopping(
                monitor=EARLY_STOPPING_MONITOR, mode="min", patience=config.patience, restore_best_weights=True
            )
            callbacks.append(stopper)
    fitted = network.fit(batches, validation_data=validation_batches, epochs=epochs, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in fitted.history[k]] for k in HISTORY_KEYS if k in fitted.history}
    best_epoch = callbacks[0].best_epoch + 1 if callbacks else len(history["loss"])
    return history, best_epoch


def _arrays(part: data_lib.LabeledData) -> tuple[np.ndarray, np.ndarray]:
    return part.features.to_numpy(dtype=np.float32), part.label.astype(np.float32).reshape(-1, 1)


def _predict(network: Any, features: np.ndarray) -> np.ndarray:
    return np.asarray(network.predict(features, batch_size=4096, verbose=0)).ravel()


def _save(network: Any, result: FitResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    network.save(folder / MODEL_FILE)
    tmp = folder / f"{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(folder / RESULT_FILE)
