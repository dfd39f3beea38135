"""Metrics, the choice of λ, and the plots that justify it.

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

from wd_pipeline.config import HIGHER_IS_BETTER, format_lambda

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def _lambda_axis(ax, lambdas: np.ndarray) -> None:
    """Log axis that still shows λ = 0: linear in the first decade below the smallest λ > 0."""
    positive = lambdas[lambdas > 0]
    linthresh = float(positive.min()) if positive.size else 1e-5
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(-0.3 * linthresh, float(lambdas.max()) * 1.5 if positive.size else linthresh)
    ax.set_xlabel("λ (weight decay, symlog scale)")
    ax.grid(True, which="major", alpha=0.3)


def validation_curve_figure(table: pd.DataFrame, metric: str, chosen: float) -> Figure:
    """Train and validation ``metric`` (and accuracy) against λ, with the chosen λ marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    lambdas = table["lambda"].to_numpy()
    for ax, name in zip(figure.subplots(1, 2), dict.fromkeys([metric, "accuracy"]), strict=False):
        ax.plot(lambdas, table[f"train_{name}"], "o-", label="train")
        ax.plot(lambdas, table[f"val_{name}"], "s-", label="validation")
        ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen λ = {format_lambda(chosen)}")
        ax.set_ylabel(name.replace("_", " "))
        ax.set_title(f"{name.replace('_', ' ')} vs λ")
        _lambda_axis(ax, lambdas)
        ax.legend()
    return figure


def weight_norm_figure(table: pd.DataFrame, chosen: float) -> Figure:
    """‖w‖₂ of the kernels against λ: the direct effect of weight decay."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4), layout="constrained")
    ax = figure.subplots()
    lambdas = table["lambda"].to_numpy()
    ax.plot(lambdas, table["weight_norm"], "o-", label="all kernels")
    ax.plot(lambdas, table["penalized_weight_norm"], "s--", label="penalised kernels")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen λ = {format_lambda(chosen)}")
    ax.set_ylabel("‖w‖₂")
    ax.set_title("weight norm vs λ")
    _lambda_axis(ax, lambdas)
    ax.legend()
    return figure


def score_on_test(model_path: str, split_folder: str | Path) -> dict[str, float]:
    """The chosen, refit model's metrics on the test split: computed once, reported, never tuned on."""
    from wd_pipeline import data as data_lib
    from wd_pipeline.model import load

    test = data_lib.load_split(split_folder, "test")
    network = load(model_path)
    probability = np.asarray(network.predict(test.features.to_numpy(np.float32), batch_size=4096, verbose=0)).ravel()
    return classification_metrics(test.label, probability)
