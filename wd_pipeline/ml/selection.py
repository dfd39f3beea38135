"""The choice of λ: cross-validated aggregates per (mode, λ) and the selection rules.

The ``lambda`` column holds a grid point's value: λ for the weight-decay modes, the dropout
rate for mode ``dropout``. In both, a larger value is the more regularised model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wd_pipeline.config import HIGHER_IS_BETTER
from wd_pipeline.ml.metrics import METRICS
from wd_pipeline.ml.modes import point_label, value_name


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

    @property
    def label(self) -> str:
        """The chosen point as people read it: ``l2 λ=1e-03`` or ``dropout p=0.2``."""
        return point_label(self.mode, self.lam)

    def tags(self) -> dict[str, str]:
        """The chosen value of every mode under its own name: ``selection.l2.lambda``, ``selection.dropout.rate``."""
        return {f"selection.{mode}.{value_name(mode)}": str(value) for mode, value in self.per_mode.items()}

    def at_grid_edge(self, grid: Sequence[float]) -> bool:
        """The chosen value is the largest of its mode's grid: the best may lie beyond it, so widen the grid."""
        return len(grid) > 1 and self.lam == max(grid)


def select(table: pd.DataFrame, metric: str, rule: str) -> Selection:
    """Pick the best mean validation ``metric``; with ``one-se``, back off to the largest λ within one SE.

    The one-standard-error rule prefers the most regularised model the data cannot tell
    apart from the best one: the largest λ, or for dropout the largest rate. Values of
    different modes are not on one scale, so the rule runs inside each mode and the mode
    holding the overall best mean wins, with that mode's chosen value.
    """
    per_mode = {mode: _select_in_mode(rows, metric, rule) for mode, rows in table.groupby("mode", sort=False)}
    best = _best_row(table, metric)
    return Selection(
        mode=best["mode"],
        lam=per_mode[best["mode"]],
        rule=rule,
        metric=metric,
        best_mode=best["mode"],
        best_lambda=float(best["lambda"]),
        per_mode=per_mode,
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
    return max(1, round(float(chosen["stopped_epoch"].mean())))


def test_predictions(model_path: str, split_folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of the chosen, refit model on the test split: computed once, never tuned on."""
    from wd_pipeline.data import splits
    from wd_pipeline.ml.network import predict_frame
    from wd_pipeline.ml.training import load_model

    test = splits.load_split(split_folder, "test")
    network, prep = load_model(model_path)
    return test.label, predict_frame(network, prep, test.features)


test_predictions.__test__ = False  # a library function, not a pytest test
