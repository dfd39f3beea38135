"""How sure a test metric is: bootstrap confidence intervals, alone and paired.

A test split of about a hundred rows moves a metric by several points from one resample to
the next, so one number cannot tell a better model from a lucky one. Resampling the rows
with replacement — the *same* rows for both models when two are compared — shows how much
of a difference is noise.

Every resample is scored at once from an index matrix: the pipeline's seven metrics reduce
to row-wise means, confusion counts and ranks, so 1000 resamples cost milliseconds where a
scikit-learn call per resample costs seconds. Full-sample values still come from
:func:`wd_pipeline.evaluate.classification_metrics`, and the tests check every vectorised
metric against scikit-learn on the resampled rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from wd_pipeline.config import HIGHER_IS_BETTER
from wd_pipeline.evaluate import METRICS, PROBABILITY_CLIP, classification_metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int  # resamples that defined the metric (single-class ones are skipped for roc_auc)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def format(self, digits: int = 4) -> str:
        """``0.9123 [0.8711, 0.9480]``: how the interval reads in a report."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def resample_indices(n_rows: int, n_resamples: int, seed: int) -> np.ndarray:
    """Row indices of ``n_resamples`` bootstrap samples, one sample per matrix row."""
    if n_rows < 2 or n_resamples < 1:
        raise ValueError(f"bootstrap needs at least 2 rows and 1 resample, got {n_rows} rows, {n_resamples} resamples")
    return np.random.default_rng(seed).integers(0, n_rows, size=(n_resamples, n_rows))


def resampled_metric(
    y_true: np.ndarray, probability: np.ndarray, rows: np.ndarray, metric: str, threshold: float = 0.5
) -> np.ndarray:
    """``metric`` on every resample in ``rows``; NaN where it is undefined (roc_auc on one class)."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    if metric == "log_loss":
        return (-(y * np.log(p) + (1 - y) * np.log1p(-p)))[rows].mean(axis=1)
    if metric == "brier":
        return np.square(p - y)[rows].mean(axis=1)
    if metric == "roc_auc":
        return _resampled_roc_auc(y[rows], p[rows])
    predicted = (p >= threshold).astype(int)
    if metric == "accuracy":
        return (predicted == y)[rows].mean(axis=1)
    if metric not in ("precision", "recall", "f1"):
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    truth, guess = y[rows], predicted[rows]
    tp = (truth & guess).sum(axis=1)
    fp = ((1 - truth) & guess).sum(axis=1)
    fn = (truth & (1 - guess)).sum(axis=1)
    numerator, denominator = {
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
        "f1": (2 * tp, 2 * tp + fp + fn),
    }[metric]
    # scikit-learn's zero_division=0, as in classification_metrics
    return np.divide(numerator, denominator, out=np.zeros(len(rows)), where=denominator > 0)


def _resampled_roc_auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC as the Mann–Whitney statistic, row by row; ties share their average rank."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    rank_sum = (ranks * y).sum(axis=1)
    pairs = positives * negatives
    auc = np.full(len(y), np.nan)
    defined = pairs > 0
    auc[defined] = (rank_sum[defined] - positives[defined] * (positives[defined] + 1) / 2) / pairs[defined]
    return auc


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level, 0)
    tail = (1 - level) / 2
    low, high = np.quantile(valid, [tail, 1 - tail])
    # ``+ 0.0`` turns the -0.0 of a negated zero difference into a plain 0.0
    return Interval(float(estimate) + 0.0, float(low) + 0.0, float(high) + 0.0, level, int(valid.size))


def bootstrap_ci(
    y_true: np.ndarray,
    probability: np.ndarray,
    metric: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
) -> Interval:
    """``metric`` on all rows with its percentile bootstrap interval."""
    return bootstrap_cis(y_true, probability, (metric,), n_resamples, seed, level, threshold)[metric]


def bootstrap_cis(
    y_true: np.ndarray,
    probability: np.ndarray,
    metrics: tuple[str, ...] = METRICS,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
) -> dict[str, Interval]:
    """Intervals for several metrics, all over the same resamples."""
    rows = resample_indices(len(np.ravel(y_true)), n_resamples, seed)
    estimates = classification_metrics(y_true, probability, threshold)
    return {
        metric: _interval(estimates[metric], resampled_metric(y_true, probability, rows, metric, threshold), level)
        for metric in metrics
    }


def paired_bootstrap_difference(
    y_true: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    metric: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
) -> Interval:
    """How much better the new model is than the old, scored on the same resampled rows.

    The difference is oriented so that positive always means "new is better", for loss-type
    and score-type metrics alike; pairing the rows cancels the noise both models share,
    which is what makes a real improvement visible on a small test split.
    """
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    rows = resample_indices(len(np.ravel(y_true)), n_resamples, seed)
    new = resampled_metric(y_true, p_new, rows, metric, threshold)
    old = resampled_metric(y_true, p_old, rows, metric, threshold)
    estimate = sign * (
        classification_metrics(y_true, p_new, threshold)[metric] - classification_metrics(y_true, p_old, threshold)[metric]
    )
    return _interval(estimate, sign * (new - old), level)
