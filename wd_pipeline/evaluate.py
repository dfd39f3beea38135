"""Metrics, the choice of λ, and the plots that justify it.

All metrics are computed from predicted probabilities with scikit-learn, never read from
Keras' ``val_loss``: that value includes the L2 penalty and would always favour λ = 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wd_pipeline.config import HIGHER_IS_BETTER

METRICS = ("accuracy", "roc_auc", "log_loss", "precision", "recall", "f1", "brier")
PROBABILITY_CLIP = 1e-7


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The seven metrics the pipeline reports, for one set of predictions."""
    from sklearn import metrics

    y_true = np.asarray(y_true).astype(int).ravel()
    probability = np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    predicted = (probability >= threshold).astype(int)
    # One call for the three: precision_score, recall_score and f1_score each run it in full,
    # and every trained unit is scored on its train and validation rows (800k at 1M rows).
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        y_true, predicted, average="binary", zero_division=0
    )
    return {
        "accuracy": float(metrics.accuracy_score(y_true, predicted)),
        "roc_auc": float(metrics.roc_auc_score(y_true, probability)),
        "log_loss": float(metrics.log_loss(y_true, probability, labels=[0, 1])),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "brier": float(metrics.brier_score_loss(y_true, probability)),
    }


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better: a tie never counts as an improvement."""
    return candidate > reference if HIGHER_IS_BETTER[metric] else candidate < reference


def fold_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """One row per trained (mode, λ, fold)."""
    return pd.DataFrame(list(rows)).sort_values(["mode", "lambda", "fold"]).reset_index(drop=True)


def aggregate(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, λ): fold means, and for validation metrics their std and standard error."""
    groups = folds.groupby(["mode", "lambda"], sort=True)
    table = groups.mean(numeric_only=True).drop(columns="fold")
    count = groups.size()
    for metric in METRICS:
        std = groups[f"val_{metric}"].std(ddof=1).fillna(0.0)
        table[f"val_{metric}_std"] = std
        table[f"val_{metric}_se"] = std / np.sqrt(count)
    table["n_folds"] = count
    return table.reset_index()


@dataclass(frozen=True)
class Selection:
    """The chosen (mode, λ), how it was chosen, and what each mode would have chosen."""

    mode: str
    lam: float
    rule: str
    metric: str
    best_mode: str
    best_lambda: float
    per_mode: dict[str, float]

    def at_grid_edge(self, grid: Sequence[float]) -> bool:
        """The chosen λ is the grid's largest: the best value may lie beyond it, so widen the grid."""
        return len(grid) > 1 and self.lam == max(grid)


def select(table: pd.DataFrame, metric: str, rule: str) -> Selection:
    """Pick the best mean validation ``metric``; with ``one-se``, back off to the largest λ within one SE.

    The one-standard-error rule prefers the most regularised model the data cannot tell
    apart from the best one. λ values of different modes are not on one scale, so the rule
    runs inside each mode and the mode holding the overall best mean wins.
    """
    per_mode = {mode: _select_in_mode(rows, metric, rule) for mode, rows in table.groupby("mode", sort=False)}
    best = _best_row(table, metric)
    return Selection(
        mode=best["mode"], lam=per_mode[best["mode"]], rule=rule, metric=metric,
        best_mode=best["mode"], best_lambda=float(best["lambda"]), per_mode=per_mode,
    )


def _best_row(table: pd.DataFrame, metric: str) -> pd.Series:
    """Best mean; among equals, the largest λ (the simpler model)."""
    column = table[f"val_{metric}"].to_numpy()
    target = np.nanmax(column) if HIGHER_IS_BETTER[metric] else np.nanmin(column)
    tied = table[np.isclose(column, target, rtol=0, atol=1e-12)]
    return tied.sort_values("lambda").iloc[-1]


def _select_in_mode(rows: pd.DataFrame, metric: str, rule: str) -> float:
    best = _best_row(rows, metric)
    if rule == "best":
        return float(best["lambda"])
    mean, se = float(best[f"val_{metric}"]), float(best[f"val_{metric}_se"])
    means = rows[f"val_{metric}"]
    close = means >= mean - se if HIGHER_IS_BETTER[metric] else means <= mean + se
    return float(rows.loc[close, "lambda"].max())


def refit_epochs(folds: pd.DataFrame, selection: Selection, default: int) -> int:
    """Epochs for the refit on all training data: the mean best epoch of the chosen point's folds."""
    chosen = folds[(folds["mode"] == selection.mode) & (folds["lambda"] == selection.lam)]
    if chosen.empty or "stopped_epoch" not in chosen:
        return default
    return max(1, int(round(float(chosen["stopped_epoch"].mean()))))


def test_predictions(model_path: str, split_folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of the chosen, refit model on the test split: computed once, never tuned on."""
    from wd_pipeline import data as data_lib
    from wd_pipeline.model import load, predict_probability

    test = data_lib.load_split(split_folder, "test")
    return test.label, predict_probability(load(model_path), test.features.to_numpy(np.float32))


test_predictions.__test__ = False  # a library function, not a pytest test
