"""Which raw columns the model leans on: permutation importance on the test split.

A column's values are shuffled across the test rows, which keeps their distribution and
breaks their link to the label and to the other columns; the model then scores the
shuffled table through the same raw-frame path it is served with, so a categorical column
(one-hot or embedded inside the network) is shuffled and counted once, as the column a
user knows. Importance is how much that costs: the drop in ROC AUC and the rise in log
loss against the unshuffled table. Shuffling is repeated; the importance is the mean over
repeats with a Student-t interval from their spread (a single repeat has no interval).

A column near zero is one the model does not use on these rows; a negative value is
noise, not a column that hurts. Correlated columns share their importance: shuffling one
leaves the other to carry the signal, so both can look small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd

from wd_pipeline.ml.bootstrap import DEFAULT_LEVEL, Interval
from wd_pipeline.ml.member_metrics import members_metrics

Predict = Callable[[pd.DataFrame], np.ndarray]  # raw frame → probability of the positive class
# Every (column, repeat) scores the model on all rows measured, so a large test split is measured
# on a seeded sample of this many rows: the ranking and intervals hardly move, the minutes go.
MAX_ROWS = 20_000
# Shuffled copies of the rows are scored together, up to this many rows per call of the model:
# one call per shuffle would pay the model's fixed cost per call hundreds of times on a small split.
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ColumnImportance:
    """What shuffling one raw column costs the model."""

    column: str
    roc_auc_drop: Interval  # positive: the model ranks worse without the column
    log_loss_rise: Interval  # positive: its probabilities are worse without the column

    def row(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "roc_auc_drop": self.roc_auc_drop.estimate,
            "roc_auc_drop_ci_low": self.roc_auc_drop.low,
            "roc_auc_drop_ci_high": self.roc_auc_drop.high,
            "log_loss_rise": self.log_loss_rise.estimate,
            "log_loss_rise_ci_low": self.log_loss_rise.low,
            "log_loss_rise_ci_high": self.log_loss_rise.high,
        }


@dataclass(frozen=True)
class Importance:
    """Every raw column's importance, most important first, and what it was measured against."""

    columns: tuple[ColumnImportance, ...]
    baseline_roc_auc: float
    baseline_log_loss: float
    repeats: int
    level: float
    rows_measured: int = 0  # test rows the shuffles were scored on (a sample when the split is larger)
    rows_in_split: int = 0

    @property
    def sampled(self) -> bool:
        return self.rows_measured < self.rows_in_split

    def rows(self) -> list[dict[str, Any]]:
        return [{"rank": rank, **column.row()} for rank, column in enumerate(self.columns, start=1)]

    def ranking(self) -> list[str]:
        return [column.column for column in self.columns]


def permutation_importance(
    predict: Predict,
    features: pd.DataFrame,
    y_true: np.ndarray,
    *,
    columns: Sequence[str],
    repeats: int,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    max_rows: int = MAX_ROWS,
) -> Importance:
    """Shuffle each of ``columns`` ``repeats`` times and score the model on the result; sorted by ROC AUC drop.

    Each column gets its own seeded generator (from ``seed`` and its position), so adding a
    column does not change the shuffles of the others. Over ``max_rows`` rows, a seeded sample
    of that many (in their order) is measured.
    """
    if repeats < 1:
        raise ValueError(f"permutation importance needs at least one repeat, got {repeats}")
    in_split = len(features)
    features, y_true = _sample(features, np.asarray(y_true), max_rows, seed)
    y = np.asarray(y_true).astype(int).ravel()
    if len(np.unique(y)) < 2:
        raise ValueError("permutation importance needs both classes among the rows: ROC AUC is undefined otherwise")
    baseline = _scored(y, predict(features))
    drops: dict[str, list[float]] = {column: [] for column in columns}
    rises: dict[str, list[float]] = {column: [] for column in columns}
    shuffles = _shuffles(features, columns, repeats, seed)
    per_call = max(1, BATCH_ROWS // max(len(features), 1))
    while batch := list(islice(shuffles, per_call)):
        probabilities = np.asarray(predict(pd.concat([frame for _, frame in batch], ignore_index=True)))
        for (column, _), scored in zip(batch, members_metrics(y, probabilities.reshape(len(batch), -1)), strict=True):
            drops[column].append(baseline["roc_auc"] - scored["roc_auc"])
            rises[column].append(scored["log_loss"] - baseline["log_loss"])
    results = [
        ColumnImportance(column, mean_interval(drops[column], level), mean_interval(rises[column], level))
        for column in columns
    ]
    # Rounded: two ways of summing the same shuffles may differ in the last bit, which must not reorder ties.
    ordered = sorted(
        results, key=lambda c: (-round(c.roc_auc_drop.estimate, 12), -round(c.log_loss_rise.estimate, 12), c.column)
    )
    return Importance(
        tuple(ordered), baseline["roc_auc"], baseline["log_loss"], repeats, level, len(features), in_split
    )


def _shuffles(
    features: pd.DataFrame, columns: Sequence[str], repeats: int, seed: int
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each column shuffled ``repeats`` times, by a generator of its own (from ``seed`` and its position)."""
    for column, column_seed in zip(columns, np.random.SeedSequence(seed).spawn(len(columns)), strict=True):
        generator = np.random.default_rng(column_seed)
        values = features[column].to_numpy()
        for _ in range(repeats):
            yield column, features.assign(**{column: values[generator.permutation(len(features))]})


def _sample(features: pd.DataFrame, y: np.ndarray, max_rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """At most ``max_rows`` of the rows, drawn without replacement from ``seed``, kept in their order."""
    if len(features) <= max_rows:
        return features, y
    chosen = np.sort(np.random.default_rng([seed, len(features)]).choice(len(features), max_rows, replace=False))
    return features.iloc[chosen].reset_index(drop=True), y[chosen]


def _scored(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The metrics of one shuffle, without scikit-learn's per-call input checks: a run scores hundreds."""
    return members_metrics(y, np.asarray(probability).reshape(1, -1))[0]


def mean_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> Interval:
    """The mean of repeated measurements with its Student-t interval; NaN bounds for a single value."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, float("nan"), float("nan"), level, len(values))
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return Interval(mean + 0.0, mean - half + 0.0, mean + half + 0.0, level, len(values))
