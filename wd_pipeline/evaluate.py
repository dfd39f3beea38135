"""Metrics and the choice of λ (the plots that justify it live in :mod:`wd_pipeline.report`).

All metrics are computed from predicted probabilities with scikit-learn, never read from
Keras' ``val_loss``: that value includes the L2 penalty and would always favour λ = 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wd_pipeline.config import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from wd_pipeline.train import PointResult

METRICS = ("accuracy", "roc_auc", "log_loss", "precision", "recall", "f1", "brier")
PROBABILITY_CLIP = 1e-7


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The seven metrics the pipeline reports, for one set of predictions."""
    from sklearn import metrics

    y_true = np.asarray(y_true).astype(int).ravel()
    probability = np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    predicted = (probability >= threshold).astype(int)
    return {
        "accuracy": float(metrics.accuracy_score(y_true, predicted)),
        "roc_auc": float(metrics.roc_auc_score(y_true, probability)),
        "log_loss": float(metrics.log_loss(y_true, probability, labels=[0, 1])),
        "precision": float(metrics.precision_score(y_true, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(y_true, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(y_true, predicted, zero_division=0)),
        "brier": float(metrics.brier_score_loss(y_true, probability)),
    }


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better: a tie never counts as an improvement."""
    return candidate > reference if HIGHER_IS_BETTER[metric] else candidate < reference


def grid_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """One row per λ, sorted by λ."""
    return pd.DataFrame(list(rows)).sort_values("lambda").reset_index(drop=True)


def select_lambda(table: pd.DataFrame, metric: str) -> float:
    """λ with the best validation ``metric``; among equals, the largest (the simpler model)."""
    column = table[f"val_{metric}"].to_numpy()
    best = np.nanmax(column) if HIGHER_IS_BETTER[metric] else np.nanmin(column)
    tied = table.loc[np.isclose(column, best, rtol=0, atol=1e-12), "lambda"]
    return float(tied.max())


@dataclass
class Evaluation:
    """The grid's verdict: the table, the chosen λ and how it does on the test split."""

    table: pd.DataFrame
    metric: str
    chosen_lambda: float
    chosen_model_path: str
    test_metrics: dict[str, float]

    def summary(self) -> dict[str, float]:
        """Metrics for the parent run: chosen λ and test_* metrics."""
        return {"chosen_lambda": self.chosen_lambda, **{f"test_{k}": v for k, v in self.test_metrics.items()}}


def evaluate_grid(results: Sequence[PointResult], split_folder: str | Path, metric: str) -> Evaluation:
    """Choose λ on validation ``metric`` and score that model, once, on the test split."""
    from wd_pipeline import data as data_lib
    from wd_pipeline.model import load

    table = grid_table(result.row() for result in results)
    chosen = select_lambda(table, metric)
    winner = next(result for result in results if result.lam == chosen)
    test = data_lib.load_split(split_folder, "test")
    network = load(winner.model_path)
    probability = np.asarray(network.predict(test.features.to_numpy(np.float32), batch_size=4096, verbose=0)).ravel()
    return Evaluation(table, metric, chosen, winner.model_path, classification_metrics(test.label, probability))
