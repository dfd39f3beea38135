"""Sliced evaluation: the test metrics of each group of rows a user names, so a weak spot cannot hide in the mean.

A slice is the set of test rows sharing one value of a carried column (``--slice-by``):
a categorical column slices by its values as they are, a gap being its own slice
:data:`MISSING`; a numeric column slices by bins whose edges are quantiles of the
*training* split (quartiles, fewer bins where quantiles coincide), so the bins are fixed
before the test rows are looked at. A slice holds only test rows: a bin or category that
no test row falls in is not listed.

Each slice gets its rows, positives and three metrics (ROC AUC where both classes occur,
log loss, accuracy at the run's decision threshold), each with a percentile bootstrap
interval drawn with :mod:`wd_pipeline.ml.bootstrap`. Slices smaller than ``min_rows`` are
marked ``small``, never dropped: their numbers are shown, with the warning that they are
too noisy to act on.

The worst slice is the one with the lowest ROC AUC among the slices that are not small
and whose ROC AUC is defined (both classes present); a tie goes to the slice listed first
(columns in the order given, then slices in table order). With no such slice there is none.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wd_pipeline.ml.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    affordable_resamples,
    resample_blocks,
    resampled_metric,
)

MISSING = "<missing>"
QUANTILES = (0.25, 0.5, 0.75)
SLICE_METRICS = ("roc_auc", "log_loss", "accuracy")
ANY_VALUE = "any value"  # the one bin of a numeric column without training values


@dataclass(frozen=True)
class SliceDefinition:
    """How one carried column cuts rows into slices: by its categories, or by training-quantile edges."""

    column: str
    numeric: bool
    edges: tuple[float, ...] = ()  # numeric only: bin i holds edges[i-1] <= value < edges[i]

    def bin_labels(self) -> list[str]:
        """A numeric column's bin labels, lowest first: ``< a``, ``[a, b)``, …, ``≥ c``."""
        if not self.edges:
            return [ANY_VALUE]
        text = _distinct_numbers(self.edges)
        middle = [f"[{low}, {high})" for low, high in itertools.pairwise(text)]
        return [f"< {text[0]}", *middle, f"≥ {text[-1]}"]

    def assign(self, values: pd.Series) -> np.ndarray:
        """Each row's slice label (object array)."""
        if not self.numeric:
            return values.astype(object).where(values.notna(), MISSING).map(str).to_numpy(dtype=object)
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        labels = np.asarray(self.bin_labels(), dtype=object)
        bins = np.searchsorted(np.asarray(self.edges, dtype=np.float64), numbers, side="right")
        assigned = labels[np.minimum(bins, len(labels) - 1)]
        assigned[np.isnan(numbers)] = MISSING
        return assigned

    def ordered(self, present: Sequence[str]) -> list[str]:
        """The labels present in table order: bins low to high, categories alphabetically, the gap last."""
        present = set(present)
        known = self.bin_labels() if self.numeric else sorted(present - {MISSING})
        return [label for label in (*known, MISSING) if label in present]


def define_slices(train: pd.DataFrame, columns: Sequence[str]) -> list[SliceDefinition]:
    """Slice definitions learnt from the training split's carried columns (numeric: quantile edges)."""
    definitions = []
    for column in columns:
        values = train[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            definitions.append(SliceDefinition(column, numeric=False))
            continue
        present = values.to_numpy(dtype=np.float64, na_value=np.nan)
        present = present[np.isfinite(present)]
        edges = tuple(float(edge) for edge in np.unique(np.quantile(present, QUANTILES))) if present.size else ()
        definitions.append(SliceDefinition(column, numeric=True, edges=edges))
    return definitions


def _distinct_numbers(edges: Sequence[float]) -> list[str]:
    """Edges printed with as few significant digits as keep them apart (four at least)."""
    for digits in range(4, 18):
        text = [f"{edge:.{digits}g}" for edge in edges]
        if len(set(text)) == len(text):
            return text
    return [repr(edge) for edge in edges]


@dataclass(frozen=True)
class SliceMetrics:
    """One slice's test numbers with their bootstrap intervals."""

    column: str
    value: str
    rows: int
    positives: int
    roc_auc: Interval | None  # None where the slice holds only one class
    log_loss: Interval
    accuracy: Interval
    small: bool  # fewer rows than the run's minimum slice size: shown, not trusted

    @property
    def name(self) -> str:
        return f"{self.column}={self.value}"

    def row(self) -> dict[str, Any]:
        """One flat table row: estimates and interval bounds per metric, NaN for an undefined ROC AUC."""
        row: dict[str, Any] = {
            "column": self.column,
            "slice": self.value,
            "rows": self.rows,
            "positives": self.positives,
        }
        for metric in SLICE_METRICS:
            interval = getattr(self, metric)
            row[metric] = interval.estimate if interval else float("nan")
            row[f"{metric}_ci_low"] = interval.low if interval else float("nan")
            row[f"{metric}_ci_high"] = interval.high if interval else float("nan")
        row["small"] = self.small
        return row


@dataclass(frozen=True)
class SliceReport:
    """Every slice of every named column, the run's settings for them, and the worst slice."""

    slices: tuple[SliceMetrics, ...]
    columns: tuple[str, ...]
    min_rows: int
    threshold: float
    level: float
    resamples: int

    @property
    def worst(self) -> SliceMetrics | None:
        """Lowest ROC AUC among slices not small with a defined ROC AUC; a tie goes to the first listed."""
        ranked = [s for s in self.slices if not s.small and s.roc_auc is not None]
        return min(ranked, key=lambda s: s.roc_auc.estimate) if ranked else None  # min keeps the first of a tie

    def worst_text(self) -> str:
        """The worst slice in one line, for a run summary."""
        worst = self.worst
        if worst is None:
            return f"none (no slice of at least {self.min_rows} rows holds both classes)"
        auc = worst.roc_auc
        bounds = f" [{auc.low:.4f}, {auc.high:.4f}]" if np.isfinite(auc.low) else ""
        return f"{worst.name}: roc_auc {auc.estimate:.4f}{bounds} on {worst.rows} rows"

    def rows(self) -> list[dict[str, Any]]:
        """One row per slice, the worst one marked."""
        worst = self.worst
        return [{**s.row(), "worst": s is worst} for s in self.slices]

    def gated(self) -> list[SliceMetrics]:
        """The slices a floor may judge: at least ``min_rows`` rows and a defined ROC AUC."""
        return [s for s in self.slices if not s.small and s.roc_auc is not None]


def slice_metrics(
    definitions: Sequence[SliceDefinition],
    test: pd.DataFrame,
    y_true: np.ndarray,
    probability: np.ndarray,
    *,
    min_rows: int,
    threshold: float,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> SliceReport:
    """The test metrics of every slice of ``test`` (carried columns, row-aligned with the labels)."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probability, dtype=np.float64).ravel()
    if not len(y) == len(p) == len(test):
        raise ValueError(f"rows differ: {len(test)} carried, {len(y)} labels, {len(p)} probabilities")
    n_resamples = affordable_resamples(len(y), n_resamples)  # the same for every slice: none is larger
    results = []
    for definition in definitions:
        labels = definition.assign(test[definition.column])
        for value in definition.ordered(pd.unique(labels)):
            rows = labels == value
            intervals = _intervals(y[rows], p[rows], threshold, n_resamples, seed, level)
            results.append(
                SliceMetrics(
                    column=definition.column,
                    value=value,
                    rows=int(rows.sum()),
                    positives=int(y[rows].sum()),
                    small=bool(rows.sum() < min_rows),
                    **intervals,
                )
            )
    return SliceReport(tuple(results), tuple(d.column for d in definitions), min_rows, threshold, level, n_resamples)


def _intervals(
    y: np.ndarray, p: np.ndarray, threshold: float, n_resamples: int, seed: int, level: float
) -> dict[str, Interval | None]:
    """Each slice metric on all of the slice's rows, with its percentile interval over resamples of them."""
    everything = np.arange(len(y))[None, :]  # the one "resample" that draws every row once
    estimates = {m: float(resampled_metric(y, p, everything, m, threshold)[0]) for m in SLICE_METRICS}
    samples: dict[str, list[np.ndarray]] = {m: [] for m in SLICE_METRICS}
    if len(y) >= 2:  # a single row has no spread to resample
        for block in resample_blocks(len(y), n_resamples, seed):
            for metric in SLICE_METRICS:
                samples[metric].append(resampled_metric(y, p, block, metric, threshold))
    intervals: dict[str, Interval | None] = {}
    for metric, estimate in estimates.items():
        drawn = np.concatenate(samples[metric]) if samples[metric] else np.zeros(0)
        intervals[metric] = None if np.isnan(estimate) else percentile_interval(estimate, drawn, level)
    return intervals


def percentile_interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    """The central ``level`` share of the defined samples around ``estimate`` (NaN bounds when none is defined)."""
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level, 0)
    tail = (1 - level) / 2
    low, high = np.quantile(valid, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), level, int(valid.size))
