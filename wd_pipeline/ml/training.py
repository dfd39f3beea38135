"""Train units of the grid — (mode, λ, fold) — or find them already trained.

A unit's ``lam`` is its grid value: λ for the weight-decay modes, the dropout rate for
mode ``dropout`` (``modes.py``).

The (fold, λ) units of one mode (or of one chunk of it) train together as one packed model
(``packed.py``), each fold on its own rows with its own adapted preprocessing; each unit is
still saved, keyed and reported as its own unit, and the members of a fold are scored in one
pass (``member_metrics.py``).

A unit's result is stored under a key made of the split folder (itself keyed by the data's
sha256 and split settings), the training settings, the mode, λ and the fold. The result
file is written last, after the model, so its presence means the unit is complete: a rerun
after a crash picks up every finished unit and trains only the rest.

Fold ``REFIT`` is the chosen point retrained on all training data (train + validation) for
the number of epochs early stopping found best across folds.

Each unit with validation rows keeps its predictions on them beside its model
(``validation.npz``): ``--threshold auto`` chooses the decision threshold on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wd_pipeline import storage, timing
from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.ml import class_weights, modes, preprocessing
from wd_pipeline.ml.metrics import METRICS, classification_metrics
from wd_pipeline.ml.preprocessing import Preprocessing

if TYPE_CHECKING:
    from wd_pipeline.ml.packed import MemberFit
    from wd_pipeline.ml.preprocessing import Encoded

RESULT_FILE = "result.json"
MODEL_FILE = "model.keras"
VALIDATION_FILE = "validation.npz"  # the unit's validation labels and probabilities
REFIT = -1
# Per-epoch series Keras reports; ``bce`` is the data term alone, ``loss`` adds the penalty.
HISTORY_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy", "bce", "val_bce")

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

    @property
    def result_path(self) -> str:
        """Where this unit's result lives: what flows pass around instead of the (large) result."""
        return str(storage.sibling(self.model_path, RESULT_FILE))

    def summary(self) -> UnitSummary:
        return UnitSummary(
            mode=self.mode,
            lam=self.lam,
            fold=self.fold,
            resumed=self.resumed,
            row=self.row(),
            model_path=self.model_path,
        )

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


@dataclass(frozen=True)
class UnitSummary:
    """A trained unit as flows hand it on: identity, its table row, and where the full result is.

    No per-epoch history: task results travel between processes (Dask) and become flow
    parameters, which Prefect caps at 512 KiB per flow run.
    """

    mode: str
    lam: float
    fold: int
    resumed: bool
    row: dict[str, Any]
    model_path: str

    @property
    def result_path(self) -> str:
        return str(storage.sibling(self.model_path, RESULT_FILE))

    def load(self) -> FitResult:
        """The full stored result, labelled with this summary's mode."""
        return load_result(self.result_path, self.mode)


def load_result(path: str | Path, mode: str | None = None) -> FitResult:
    """A stored unit result, relabelled with ``mode`` (value 0 units are shared between modes)."""
    result = FitResult.from_dict(json.loads(storage.read_text(path)))
    if mode is not None:
        result.mode = mode
        if "mode" in result.settings:
            result.settings["mode"] = mode
    return result


def effective_mode(mode: str, lam: float) -> str:
    """Value 0 (λ = 0, or dropout rate 0) is the same model in every mode: one key, trained once."""
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


def unit_folder(config: PipelineConfig, key: str, work_dir: str | Path | None = None) -> storage.Location:
    return storage.join(work_dir or config.work_dir, "points", key)


def load_finished(folder: storage.Location, mode: str) -> FitResult | None:
    """The stored result of a completed unit, or None if it never finished."""
    result_file = storage.join(folder, RESULT_FILE)
    if not (storage.exists(result_file) and storage.exists(storage.join(folder, MODEL_FILE))):
        return None
    result = load_result(result_file, mode)  # a λ = 0 unit may have been trained under the other mode's name
    result.resumed = True
    return result


def fold_data(
    split_folder: str | Path, folds: int, fold: int, seed: int
) -> tuple[splits.LabeledData, splits.LabeledData | None]:
    """Training and validation rows of one fold; the refit gets all training rows, no validation.

    With a group column in the splits, the folds keep each group on one side.
    """
    return folds_data(split_folder, folds, [fold], seed)[fold]


def folds_data(
    split_folder: str | Path, folds: int, wanted: list[int], seed: int
) -> dict[int, tuple[splits.LabeledData, splits.LabeledData | None]]:
    """:func:`fold_data` of several folds, with the splits read and the folds cut once for all of them.

    The refit alone (it follows the grid) reads its rows afresh, as one frame, and keeps no split.
    """
    if wanted == [REFIT]:
        return {REFIT: (splits.read_splits(split_folder, ["train", "validation"]), None)}
    train = splits.load_split(split_folder, "train")
    validation = splits.load_split(split_folder, "validation")
    if folds == 1:
        plain = {fold: (train, validation) for fold in wanted if fold != REFIT}
        return {**plain, **({REFIT: (splits.concat([train, validation]), None)} if REFIT in wanted else {})}
    development = splits.concat([train, validation])
    parts: dict[int, tuple[splits.LabeledData, splits.LabeledData | None]] = {}
    if REFIT in wanted:
        parts[REFIT] = (development, None)
    cross = [fold for fold in wanted if fold != REFIT]
    if cross:
        from wd_pipeline.data.groups import fold_rows

        carried = len(development.carried.columns)
        group_column = splits.read_manifest(split_folder).get("group_column") if carried else None
        groups = development.carried[group_column].to_numpy() if group_column else None
        cuts = fold_rows(development.label, groups, folds, seed)
        for fold in cross:
            train_rows, val_rows = cuts[fold]
            parts[fold] = (splits.take(development, train_rows), splits.take(development, val_rows))
    return parts


def train_chunk(
    split_folder: str | Path,
    config: PipelineConfig,
    mode: str,
    lams: list[float],
    fold: int,
    *,
    epochs: int | None = None,
    work_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> list[FitResult]:
    """Train the λ values of one (mode, fold) together; units already trained are loaded instead."""
    pairs = [(fold, lam) for lam in lams]
    return train_units(split_folder, config, mode, pairs, epochs=epochs, work_dir=work_dir, on_epoch=on_epoch)


def train_units(
    split_folder: str | Path,
    config: PipelineConfig,
    mode: str,
    pairs: list[tuple[int, float]],
    *,
    epochs: int | None = None,
    work_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> list[FitResult]:
    """Train the (fold, λ) units of one mode together as one packed model; units already trained are loaded instead.

    Each fold's rows are adapted and encoded once for all its units. Results come back in
    the order of ``pairs``. ``on_epoch`` is packed training's per-epoch callback (progress
    reporting).
    """
    epochs = epochs or config.epochs
    units = []
    for fold, lam in pairs:
        key = unit_key(split_folder, config, mode, lam, fold, epochs)
        units.append(
            _Unit(mode=mode, lam=lam, fold=fold, epochs=epochs, key=key, folder=unit_folder(config, key, work_dir))
        )
    results: dict[tuple[int, float], FitResult] = {}
    for unit in units:
        finished = load_finished(unit.folder, mode)
        if finished is not None:
            results[(unit.fold, unit.lam)] = with_validation_predictions(finished, split_folder, config)
    missing = [unit for unit in units if (unit.fold, unit.lam) not in results]
    if missing:
        for unit, result in zip(missing, _train_missing(split_folder, config, missing, on_epoch), strict=True):
            results[(unit.fold, unit.lam)] = result
    return [results[pair] for pair in pairs]


@dataclass(frozen=True)
class _FoldInputs:
    """One fold's rows as read, what was adapted on them, and their encoding."""

    train: splits.LabeledData
    validation: splits.LabeledData | None
    prep: Preprocessing
    encoded_train: tuple[Encoded, np.ndarray]
    encoded_validation: tuple[Encoded, np.ndarray] | None


def _fold_inputs(split_folder: str | Path, config: PipelineConfig, folds: list[int]) -> dict[int, _FoldInputs]:
    with timing.measure("unit_load_data"):
        parts = folds_data(split_folder, config.folds, folds, config.seed)
    schema = splits.read_schema(split_folder)
    inputs = {}
    with timing.measure("unit_encode"):
        for fold, (train, validation) in parts.items():
            prep = preprocessing.adapt(train.features, schema, one_hot_max=config.one_hot_max)
            inputs[fold] = _FoldInputs(
                train,
                validation,
                prep,
                (preprocessing.encode(prep, train.features), _labels(train)),
                (preprocessing.encode(prep, validation.features), _labels(validation)) if validation else None,
            )
    return inputs


def _train_missing(
    split_folder: str | Path,
    config: PipelineConfig,
    missing: list[_Unit],
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None,
) -> list[FitResult]:
    """Train the missing units, every fold with validation rows in one packed model (the refit, without, apart)."""
    from wd_pipeline.ml.packed import FoldPack, train_folds_packed

    mode, epochs = missing[0].mode, missing[0].epochs
    folds = sorted({unit.fold for unit in missing}, key=lambda fold: (fold == REFIT, fold))
    inputs = _fold_inputs(split_folder, config, folds)
    by_fold = {fold: [unit for unit in missing if unit.fold == fold] for fold in folds}
    trained: dict[int, FitResult] = {}
    for group in ([f for f in folds if f != REFIT], [f for f in folds if f == REFIT]):
        if not group:
            continue
        packs = [
            FoldPack(
                prep=inputs[fold].prep,
                train=inputs[fold].encoded_train,
                validation=inputs[fold].encoded_validation,
                seed=config.seed + max(fold, 0) * 101,
                lams=[modes.weight_decay(mode, unit.lam) for unit in by_fold[fold]],
                dropout_rates=[modes.dropout_rate(mode, unit.lam) for unit in by_fold[fold]],
                class_weights=class_weights.for_setting(config.class_weight, inputs[fold].train.label),
            )
            for fold in group
        ]
        started = time.perf_counter()
        with timing.interval(timing.TRAINING):
            fits = train_folds_packed(
                packs,
                mode=mode,
                hidden_units=config.hidden_units,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
                epochs=epochs,
                patience=config.patience,
                on_epoch=on_epoch,
            )
        share = (time.perf_counter() - started) / sum(len(members) for members in fits)  # members share the wall time
        for fold, members in zip(group, fits, strict=True):
            fold_in = inputs[fold]
            train_metrics, val_metrics = _score(members, fold_in)
            for unit, member, train_scores, val_scores in zip(
                by_fold[fold], members, train_metrics, val_metrics, strict=True
            ):
                trained[id(unit)] = _record(
                    member,
                    unit,
                    config,
                    fold_in.prep,
                    seconds=share,
                    metrics=(train_scores, val_scores),
                    val_label=validation_label(fold_in.validation),
                )
    return [trained[id(unit)] for unit in missing]


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
    """One (mode, λ, fold): a chunk of one."""
    return train_chunk(split_folder, config, mode, [lam], fold, epochs=epochs, work_dir=work_dir)[0]


@dataclass(frozen=True)
class _Unit:
    """One (mode, λ, fold) of a chunk: what its result records and the folder it is stored in."""

    mode: str
    lam: float
    fold: int
    epochs: int
    key: str
    folder: storage.Location


def validation_label(validation: splits.LabeledData | None) -> np.ndarray | None:
    return validation.label if validation is not None else None


def _score(members: list[MemberFit], fold: _FoldInputs) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Every member of a fold scored on its training and validation rows, all members in one pass per part."""
    from wd_pipeline.ml.member_metrics import members_metrics

    with timing.measure("unit_score"):
        train = members_metrics(fold.train.label, np.stack([member.train_probability for member in members]))
        if fold.validation is None:
            return train, [{} for _ in members]
        validation = np.stack([member.val_probability for member in members])
        return train, members_metrics(fold.validation.label, validation)


def _record(
    member: MemberFit,
    unit: _Unit,
    config: PipelineConfig,
    prep: Preprocessing,
    *,
    seconds: float,
    metrics: tuple[dict[str, float], dict[str, float]],
    val_label: np.ndarray | None,
) -> FitResult:
    """Save a trained member's model, its preprocessing and result (result last: it marks completion)."""
    from wd_pipeline.ml.network import keras_l2, penalty, weight_norm

    network = member.model
    train_metrics, val_metrics = metrics
    mode, lam = unit.mode, unit.lam
    result = FitResult(
        mode=mode,
        lam=float(lam),
        fold=unit.fold,
        key=unit.key,
        model_path=str(storage.absolute(storage.join(unit.folder, MODEL_FILE))),
        history=member.history,
        train_metrics=train_metrics,
        val_metrics=val_metrics,
        weight_norm=weight_norm(network),
        penalized_weight_norm=weight_norm(network, penalized_only=True),
        penalty=penalty(network),
        best_epoch=member.best_epoch,
        epochs_run=len(member.history.get("loss", [])),
        train_seconds=seconds,
        settings={
            "mode": mode,
            "lambda": modes.weight_decay(mode, lam),
            "dropout_rate": modes.dropout_rate(mode, lam),
            "keras_l2": keras_l2(lam) if mode == "l2" else 0.0,
            "adamw_weight_decay": lam if mode == "decoupled" else 0.0,
            "fold": unit.fold,
            **config.training_key(),
            "epochs": unit.epochs,
        },
    )
    validation = (val_label, member.val_probability) if val_label is not None else None
    with timing.measure("unit_save"):
        _save(network, prep, result, unit.folder, validation)
    return result


def _labels(part: splits.LabeledData) -> np.ndarray:
    return part.label.astype(np.float32).reshape(-1, 1)


def load_model(model_path: str | Path) -> tuple[Any, Preprocessing]:
    """A saved unit's network and the preprocessing it was adapted with (saved beside it)."""
    from wd_pipeline.ml.network import load

    local = storage.local_file(model_path)
    return load(str(local)), Preprocessing.load(local.parent)


def _save(
    network: Any,
    prep: Preprocessing,
    result: FitResult,
    folder: storage.Location,
    validation: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> None:
    """Write into a private folder, then rename it into place: a unit appears whole or not at all.

    Two workers may train the same unit (λ = 0 of two modes); the second rename finds the
    folder present and its copy is dropped. On S3 the folder is uploaded, its result last.
    """
    if storage.is_remote(folder):
        with storage.writing_folder(folder, last=RESULT_FILE) as staging:
            _write_unit(network, prep, result, staging, validation)
        return
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    _write_unit(network, prep, result, staging, validation)
    try:
        staging.rename(folder)
    except OSError:
        if not (folder / RESULT_FILE).exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _write_unit(
    network: Any,
    prep: Preprocessing,
    result: FitResult,
    staging: Path,
    validation: tuple[np.ndarray, np.ndarray | None] | None,
) -> None:
    network.save(staging / MODEL_FILE)
    prep.save(staging)
    if validation is not None and validation[1] is not None:
        save_validation_predictions(staging / VALIDATION_FILE, *validation)
    (staging / RESULT_FILE).write_text(json.dumps(result.to_dict()))


def save_validation_predictions(path: Path, label: np.ndarray, probability: np.ndarray) -> None:
    """Labels and probabilities of a unit's validation rows, written whole or not at all."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, label=np.asarray(label, dtype=np.int8).ravel(), probability=np.asarray(probability).ravel())
    tmp.replace(path)


def validation_predictions(model_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of a unit's validation rows, as stored beside its model."""
    with np.load(storage.local_file(storage.sibling(model_path, VALIDATION_FILE))) as stored:
        return stored["label"], stored["probability"]


def with_validation_predictions(result: FitResult, split_folder: str | Path, config: PipelineConfig) -> FitResult:
    """A resumed unit with its validation predictions, and with any metric added since it was trained.

    A unit trained before either existed is predicted again from its saved model on its
    fold's rows; its stored metrics are kept, the missing ones added, and the result file
    rewritten (whole, after the predictions: it still marks completion).
    """
    stored = storage.sibling(result.model_path, VALIDATION_FILE)
    missing = [m for m in METRICS if m not in result.val_metrics or m not in result.train_metrics]
    if result.fold == REFIT or (storage.exists(stored) and not missing):
        return result
    from wd_pipeline.ml.network import predict_frame

    train, validation = fold_data(split_folder, config.folds, result.fold, config.seed)
    assert validation is not None  # every fold but the refit has validation rows
    network, prep = load_model(result.model_path)
    probability = predict_frame(network, prep, validation.features)
    local = storage.local_file(stored)
    save_validation_predictions(local, validation.label, probability)
    storage.publish_file(local, stored)
    if missing:
        train_probability = predict_frame(network, prep, train.features)
        result.train_metrics = {**classification_metrics(train.label, train_probability), **result.train_metrics}
        result.val_metrics = {**classification_metrics(validation.label, probability), **result.val_metrics}
        resumed, result.resumed = result.resumed, False
        storage.write_text(storage.sibling(stored, RESULT_FILE), json.dumps(result.to_dict()))
        result.resumed = resumed
    return result
