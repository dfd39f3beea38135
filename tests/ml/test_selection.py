"""Metrics and the choice of λ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wd_pipeline.ml.metrics import METRICS, classification_metrics, is_better
from wd_pipeline.ml.selection import aggregate, refit_epochs, select


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


def _table(val_log_loss: list[float], se: list[float] | None = None, mode: str = "l2") -> pd.DataFrame:
    lambdas = [0.0, 1e-3, 1e-2, 1e-1][: len(val_log_loss)]
    return pd.DataFrame(
        {
            "mode": mode,
            "lambda": lambdas,
            "val_log_loss": val_log_loss,
            "val_log_loss_se": se or [0.0] * len(lambdas),
            "val_accuracy": [0.9] * len(lambdas),
            "val_accuracy_se": [0.0] * len(lambdas),
        }
    )


def test_best_rule_picks_lowest_loss() -> None:
    selection = select(_table([0.30, 0.20, 0.25, 0.40]), "log_loss", "best")
    assert (selection.mode, selection.lam, selection.best_lambda) == ("l2", 1e-3, 1e-3)


def test_ties_go_to_the_larger_lambda() -> None:
    assert select(_table([0.3, 0.3, 0.3, 0.3]), "accuracy", "best").lam == 1e-1


def test_one_se_rule_on_a_hand_made_table() -> None:
    """Best mean 0.20 ± 0.03 at λ=1e-3: λ=1e-2 (0.22) is within one SE, λ=1e-1 (0.24) is not."""
    table = _table([0.30, 0.20, 0.22, 0.24], se=[0.02, 0.03, 0.02, 0.02])
    selection = select(table, "log_loss", "one-se")
    assert (selection.lam, selection.best_lambda, selection.rule) == (1e-2, 1e-3, "one-se")
    assert select(table, "log_loss", "best").lam == 1e-3


def test_one_se_rule_for_a_higher_is_better_metric() -> None:
    table = _table([0.3] * 4).assign(val_accuracy=[0.90, 0.95, 0.93, 0.91], val_accuracy_se=[0.01, 0.02, 0.01, 0.01])
    assert select(table, "accuracy", "one-se").lam == 1e-2


def test_modes_are_chosen_separately_and_the_best_mode_wins() -> None:
    table = pd.concat([_table([0.30, 0.20, 0.25, 0.40]), _table([0.30, 0.28, 0.18, 0.40], mode="decoupled")])
    selection = select(table, "log_loss", "best")
    assert selection.per_mode == {"l2": 1e-3, "decoupled": 1e-2}
    assert (selection.mode, selection.lam) == ("decoupled", 1e-2)


def test_selection_ignores_keras_val_loss() -> None:
    """val_loss (with penalty) always favours λ = 0; the selection reads val_<metric> only."""
    table = _table([0.30, 0.20, 0.25, 0.40]).assign(val_loss=[0.30, 0.35, 0.50, 0.90])
    assert select(table, "log_loss", "best").lam == 1e-3


def test_aggregate_gives_means_std_and_standard_errors() -> None:
    folds = pd.DataFrame(
        {"mode": "l2", "lambda": 0.1, "fold": [0, 1, 2], "weight_norm": [1.0, 2.0, 3.0], "stopped_epoch": [10, 20, 30]}
        | {f"val_{m}": [0.1, 0.2, 0.3] for m in METRICS}
        | {f"train_{m}": [0.0, 0.0, 0.3] for m in METRICS}
    )
    row = aggregate(folds).iloc[0]
    assert row["val_log_loss"] == pytest.approx(0.2) and row["train_log_loss"] == pytest.approx(0.1)
    assert row["val_log_loss_std"] == pytest.approx(0.1)
    assert row["val_log_loss_se"] == pytest.approx(0.1 / np.sqrt(3))
    assert (row["weight_norm"], row["stopped_epoch"], row["n_folds"]) == (2.0, 20.0, 3)


def test_refit_epochs_average_the_chosen_point_folds() -> None:
    folds = pd.DataFrame({"mode": "l2", "lambda": [0.1, 0.1, 0.0], "stopped_epoch": [10, 13, 99]})
    selection = select(_table([0.3, 0.2]), "log_loss", "best")
    chosen = selection.__class__(**{**selection.__dict__, "lam": 0.1})
    assert refit_epochs(folds, chosen, default=100) == 12


def test_is_better_is_strict_and_knows_direction() -> None:
    assert is_better(0.9, 0.8, "roc_auc") and not is_better(0.8, 0.8, "roc_auc")
    assert is_better(0.1, 0.2, "log_loss") and not is_better(0.2, 0.2, "log_loss")


def test_a_choice_at_the_top_of_the_grid_is_flagged() -> None:
    table = _table([0.30, 0.25, 0.22, 0.20])
    assert select(table, "log_loss", "best").at_grid_edge(table["lambda"])
    assert not select(_table([0.30, 0.20, 0.25, 0.40]), "log_loss", "best").at_grid_edge(table["lambda"])


def test_dropout_one_se_backs_off_to_the_largest_rate_and_its_own_grid_edge() -> None:
    dropout = _table([0.30, 0.20, 0.205, 0.40], se=[0.01] * 4, mode="dropout").assign(
        **{"lambda": [0.0, 0.1, 0.3, 0.5]}
    )
    l2 = _table([0.30, 0.25, 0.26, 0.40], se=[0.01] * 4)
    selection = select(pd.concat([l2, dropout], ignore_index=True), "log_loss", "one-se")
    assert selection.per_mode == {"l2": 1e-2, "dropout": 0.3}
    assert (selection.mode, selection.lam, selection.label) == ("dropout", 0.3, "dropout p=0.3")
    assert selection.tags() == {"selection.l2.lambda": "0.01", "selection.dropout.rate": "0.3"}
    assert not selection.at_grid_edge([0.0, 0.1, 0.3, 0.5])
    assert selection.at_grid_edge([0.0, 0.1, 0.3])
