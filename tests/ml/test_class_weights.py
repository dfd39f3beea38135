"""``--class-weight balanced`` reaches training with weights from the rows each model trains on."""

from __future__ import annotations

import pytest

from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.ml import class_weights, packed, training


@pytest.mark.parametrize("fold", [0, training.REFIT])
def test_weights_come_from_the_fold_or_refit_training_rows(tmp_path, monkeypatch, fold: int) -> None:
    config = PipelineConfig(class_weight="balanced", folds=3, epochs=1, grid=[0.0], work_dir=str(tmp_path))
    folder = splits.prepare(config, tmp_path)
    seen = []
    real = packed.train_folds_packed

    def spy(folds, **kwargs):
        seen.extend(fold.class_weights for fold in folds)
        return real(folds, **kwargs)

    monkeypatch.setattr(packed, "train_folds_packed", spy)
    (result,) = training.train_chunk(folder, config, "dropout", [0.2], fold)
    train_rows, _ = training.fold_data(folder, config.folds, fold, config.seed)
    n, positives = len(train_rows.label), int(train_rows.label.sum())
    assert seen == [{0: pytest.approx(n / (2 * (n - positives))), 1: pytest.approx(n / (2 * positives))}]
    assert seen[0] == class_weights.balanced(train_rows.label)
    assert result.settings["class_weight"] == "balanced" and result.settings["dropout_rate"] == 0.2


def test_without_class_weights_nothing_is_weighted(tmp_path, monkeypatch) -> None:
    config = PipelineConfig(folds=2, epochs=1, grid=[0.0], work_dir=str(tmp_path))
    folder = splits.prepare(config, tmp_path)
    seen = []
    real = packed.train_folds_packed
    monkeypatch.setattr(
        packed, "train_folds_packed", lambda folds, **k: seen.extend(f.class_weights for f in folds) or real(folds, **k)
    )
    training.train_chunk(folder, config, "l2", [0.0], 0)
    assert seen == [None]
