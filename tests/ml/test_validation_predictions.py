"""Every trained unit keeps its validation predictions beside its model, resumed units included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, frame_schema, mixed_table
from wd_pipeline.config import PipelineConfig, make_config
from wd_pipeline.data import splits
from wd_pipeline.ml import training
from wd_pipeline.ml.metrics import classification_metrics

FOLDS = 2
ROWS = 90


@pytest.fixture
def split_layer(monkeypatch: pytest.MonkeyPatch) -> PipelineConfig:
    """Sixty training and thirty validation rows in place of a split folder; returns the run's config."""
    table = mixed_table(rows=ROWS, seed=5)
    frame = table.frame.astype({"age": "float64"})
    columns = list(table.features.columns)
    label = frame["y"].to_numpy(np.int8)
    parts = {
        "train": splits.LabeledData(frame.iloc[:60][columns], label[:60]),
        "validation": splits.LabeledData(frame.iloc[60:][columns].reset_index(drop=True), label[60:]),
    }
    monkeypatch.setattr(splits, "load_split", lambda folder, name: parts[name])
    monkeypatch.setattr(splits, "read_splits", lambda folder, names: splits.concat([parts[name] for name in names]))
    monkeypatch.setattr(splits, "read_schema", lambda folder: frame_schema(frame, columns))
    return make_config(label="y", folds=FOLDS, grid=[0.0, 1e-2], epochs=2, patience=0, one_hot_max=MIXED_ONE_HOT_MAX)


def train_all(config: PipelineConfig, work: Path) -> Iterator[training.FitResult]:
    for fold in [*range(FOLDS), training.REFIT]:
        yield from training.train_chunk(work / "splits" / "s", config, "l2", [0.0, 1e-2], fold, work_dir=work)


def test_each_fold_keeps_the_predictions_its_validation_metrics_came_from(split_layer, tmp_path: Path) -> None:
    results = list(train_all(split_layer, tmp_path))
    pooled = 0
    for result in results:
        stored = Path(result.model_path).with_name(training.VALIDATION_FILE)
        if result.fold == training.REFIT:
            assert not stored.exists()  # trained on every development row: nothing to validate on
            continue
        label, probability = training.validation_predictions(result.model_path)
        _, validation = training.fold_data("s", FOLDS, result.fold, split_layer.seed)
        np.testing.assert_array_equal(label, validation.label)
        assert classification_metrics(label, probability) == pytest.approx(result.val_metrics)
        pooled += len(label) if result.lam == 0 else 0
    assert pooled == ROWS  # the folds' validation rows together: every development row once


def test_a_unit_trained_before_predictions_were_kept_gets_them_when_resumed(split_layer, tmp_path: Path) -> None:
    first = {(r.lam, r.fold): r for r in train_all(split_layer, tmp_path)}
    unit = first[(1e-2, 1)]
    stored = Path(unit.model_path).with_name(training.VALIDATION_FILE)
    kept = training.validation_predictions(unit.model_path)
    # As an older version left it: no predictions file, and a result without the newest metric.
    stored.unlink()
    result_file = Path(unit.result_path)
    old = json.loads(result_file.read_text())
    for part in ("train_metrics", "val_metrics"):
        del old[part]["average_precision"]
    result_file.write_text(json.dumps(old))

    again = {(r.lam, r.fold): r for r in train_all(split_layer, tmp_path)}
    resumed = again[(1e-2, 1)]
    assert all(r.resumed for r in again.values())
    np.testing.assert_array_equal(training.validation_predictions(unit.model_path)[0], kept[0])
    np.testing.assert_allclose(training.validation_predictions(unit.model_path)[1], kept[1], rtol=1e-5, atol=1e-6)
    assert resumed.val_metrics["average_precision"] == pytest.approx(unit.val_metrics["average_precision"], abs=1e-6)
    assert training.load_result(result_file).val_metrics == pytest.approx(resumed.val_metrics)
    assert training.load_result(result_file).resumed is False
