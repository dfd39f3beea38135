"""Metrics and the choice of λ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wd_pipeline.evaluate import METRICS, classification_metrics, is_better, select_lambda


def test_metrics_on_a_hand_made_case() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p)
    assert set(m) == set(METRICS)
    assert m["accuracy"] == 0.5
    assert m["roc_auc"] == 0.75
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9])))


def _table(val_log_loss: list[float]) -> pd.DataFrame:
    lambdas = [0.0, 1e-3, 1e-2, 1e-1][: len(val_log_loss)]
    return pd.DataFrame({"lambda": lambdas, "val_log_loss": val_log_loss, "val_accuracy": [0.9] * len(lambdas)})


def test_select_lowest_loss() -> None:
    assert select_lambda(_table([0.30, 0.20, 0.25, 0.40]), "log_loss") == 1e-3


def test_ties_go_to_the_larger_lambda() -> None:
    assert select_lambda(_table([0.3, 0.3, 0.3, 0.3]), "accuracy") == 1e-1


def test_selection_ignores_keras_val_loss() -> None:
    """val_loss (with penalty) always favours λ = 0; the selection reads val_<metric> only."""
    table = _table([0.30, 0.20, 0.25, 0.40]).assign(val_loss=[0.30, 0.35, 0.50, 0.90])
    assert select_lambda(table, "log_loss") == 1e-3


def test_is_better_is_strict_and_knows_direction() -> None:
    assert is_better(0.9, 0.8, "roc_auc") and not is_better(0.8, 0.8, "roc_auc")
    assert is_better(0.1, 0.2, "log_loss") and not is_better(0.2, 0.2, "log_loss")

