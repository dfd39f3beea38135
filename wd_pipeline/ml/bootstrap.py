"""How sure a test metric is: bootstrap confidence intervals, alone and paired.

A test split of about a hundred rows moves a metric by several points from one resample to
the next, so one number cannot tell a better model from a lucky one. Resampling the rows
with replacement — the *same* rows for both models when two are compared — shows how much
of a difference is noise.

Every resample is scored at once from an index matrix: the pipeline's metrics reduce to
row-wise means, confusion counts, ranks and running counts down the ranking, so 1000 resamples cost milliseconds where a
scikit-learn call per resample costs seconds. The matrix is drawn in blocks of about 4M
indices (the same numbers as one draw): 1000 resamples of a 200k-row test split would
otherwise hold 1.6 GB of indices and several GB of gathered values at once. Full-sample values still come from
:func:`wd_pipeline.ml.metrics.classification_metrics`, and the tests check every vectorised
metric against scikit-learn on the resampled rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wd_pipeline.config import HIGHER_IS_BETTER
from wd_pipeline.ml.metrics import METRICS, PROBABILITY_CLIP, classification_metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
BLOCK_INDICES = 1 << 22  # indices per block of resamples: 32 MiB of int64
# Every resample is a pass over every row. Beyond this many (resample × row) cells, fewer
# resamples are drawn (never fewer than MIN_RESAMPLES): all 1000 up to 50,000 test rows, then
# fewer, so a split of millions costs seconds, not minutes. Its intervals are narrow, and an
# Interval says how many resamples it had.
MAX_RESAMPLED_CELLS = 50_000_000
MIN_RESAMPLES = 100


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int  # resamples that defined the metric (single-class ones are skipped for roc_auc and AP)

    def format(self, digits: int = 4) -> str:
        """``0.9123 [0.8711, 0.9480]``: how the interval reads in a report."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def affordable_resamples(n_rows: int, requested: int) -> int:
    """``requested``, or fewer on a large split: at most :data:`MAX_RESAMPLED_CELLS` row draws, at least
    :data:`MIN_RESAMPLES` resamples (and never more than asked for)."""
    return min(requested, max(MIN_RESAMPLES, MAX_RESAMPLED_CELLS // max(n_rows, 1)))


def resample_indices(n_rows: int, n_resamples: int, seed: int) -> np.ndarray:
    """Row indices of ``n_resamples`` bootstrap samples, one sample per matrix row."""
    return np.concatenate(list(resample_blocks(n_rows, n_resamples, seed)))


def resample_blocks(n_rows: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """:func:`resample_indices` a block of matrix rows at a time: the same indices, bounded memory.

    The generator fills a matrix element by element in row order, so consecutive blocks
    drawn from one generator are the rows of the one big draw.
    """
    if n_rows < 2 or n_resamples < 1:
        raise ValueError(f"bootstrap needs at least 2 rows and 1 resample, got {n_rows} rows, {n_resamples} resamples")
    generator = np.random.default_rng(seed)
    per_block = max(1, BLOCK_INDICES // n_rows)
    for start in range(0, n_resamples, per_block):
        yield generator.integers(0, n_rows, size=(min(per_block, n_resamples - start), n_rows))


def _resampled(
    y_true: np.ndarray,
    probabilities: tuple[np.ndarray, ...],
    metrics: tuple[str, ...],
    *,
    n_resamples: int,
    seed: int,
    thresholds: tuple[float, ...],
) -> dict[tuple[int, str], np.ndarray]:
    """Each metric of each probability vector (labelled at its own threshold) on every resample, block by block."""
    y = np.asarray(y_true).astype(int).ravel()
    clipped = [_clip(probability) for probability in probabilities]
    ranked = {"roc_auc", "average_precision"} & set(metrics)
    rankings = [Ranking.of(p) if ranked else None for p in clipped]
    parts: dict[tuple[int, str], list[np.ndarray]] = {
        (i, metric): [] for i in range(len(probabilities)) for metric in metrics
    }
    for rows in resample_blocks(len(y), affordable_resamples(len(y), n_resamples), seed):
        weights = resample_weights(rows, len(y))
        for (i, metric), values in parts.items():
            values.append(
                _weighted_metric(y, clipped[i], weights, metric, threshold=thresholds[i], ranking=rankings[i])
            )
    return {key: np.concatenate(values) for key, values in parts.items()}


def resample_weights(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """How often each of ``n_rows`` rows is drawn in each resample (a matrix row per resample).

    Metrics then become matrix–vector products over the rows instead of gathers of every
    drawn index, which on 1000 resamples of 200k rows was most of the evaluation's time.
    """
    cells = (rows + n_rows * np.arange(len(rows))[:, None]).ravel()
    return np.bincount(cells, minlength=len(rows) * n_rows).reshape(len(rows), n_rows).astype(np.float64)


def _clip(probability: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)


def resampled_metric(
    y_true: np.ndarray, probability: np.ndarray, rows: np.ndarray, metric: str, threshold: float = 0.5
) -> np.ndarray:
    """``metric`` on every resample in ``rows``; NaN where it is undefined (roc_auc on one class,
    average_precision without a positive row)."""
    y = np.asarray(y_true).astype(int).ravel()
    return _weighted_metric(y, _clip(probability), resample_weights(rows, len(y)), metric, threshold=threshold)


@dataclass(frozen=True)
class Ranking:
    """Rows sorted by probability and where each run of equal probabilities starts: sorted once per bootstrap."""

    order: np.ndarray
    before: np.ndarray  # per sorted position: the last position before its run of ties (-1 for none)
    last: np.ndarray  # per sorted position: the last position of its run of ties

    @classmethod
    def of(cls, p: np.ndarray) -> Ranking:
        order = np.argsort(p, kind="stable")
        ordered = p[order]
        new_value = np.r_[True, ordered[1:] != ordered[:-1]]
        starts = np.flatnonzero(new_value)
        run = np.cumsum(new_value) - 1
        ends = np.r_[starts[1:], len(p)] - 1
        return cls(order, starts[run] - 1, ends[run])


def _weighted_metric(
    y: np.ndarray, p: np.ndarray, weights: np.ndarray, metric: str, *, threshold: float, ranking: Ranking | None = None
) -> np.ndarray:
    """``metric`` of every resample given as draw counts per row (see :func:`resample_weights`)."""
    drawn = weights.shape[1]  # a resample draws as many rows as there are
    # Float vectors keep the products below in BLAS (an int vector takes numpy's slow path).
    if metric == "log_loss":
        return weights @ -(y * np.log(p) + (1 - y) * np.log1p(-p)) / drawn
    if metric == "brier":
        return weights @ np.square(p - y) / drawn
    if metric == "roc_auc":
        return _resampled_roc_auc(y, ranking or Ranking.of(p), weights)
    if metric == "average_precision":
        return _resampled_average_precision(y, ranking or Ranking.of(p), weights)
    truth, predicted = y == 1, p >= threshold
    if metric == "accuracy":
        return weights @ (predicted == truth).astype(np.float64) / drawn
    if metric not in ("precision", "recall", "f1"):
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    tp = weights @ (truth & predicted).astype(np.float64)
    fp = weights @ (~truth & predicted).astype(np.float64)
    fn = weights @ (truth & ~predicted).astype(np.float64)
    numerator, denominator = {
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
        "f1": (2 * tp, 2 * tp + fp + fn),
    }[metric]
    # scikit-learn's zero_division=0, as in classification_metrics
    return np.divide(numerator, denominator, out=np.zeros(len(weights)), where=denominator > 0)


def _resampled_roc_auc(y: np.ndarray, ranking: Ranking, weights: np.ndarray) -> np.ndarray:
    """ROC AUC as the Mann–Whitney statistic, resample by resample; ties share their average rank.

    The rows are sorted by probability once; a resample's ranks then follow from the running
    count of its draws in that order: a row's average rank is the midpoint between the draws
    before its run of ties and the draws up to the end of that run. Sorting every resample
    gave the same values (half-integer sums, exact in float64) but cost ~20 s for 1000
    resamples of 200k rows.
    """
    drawn = weights[:, ranking.order]
    label = y[ranking.order].astype(np.float64)
    running = np.concatenate([np.zeros((len(drawn), 1)), np.cumsum(drawn, axis=1)], axis=1)  # column i+1: up to i
    rank = (running[:, ranking.before + 1] + running[:, ranking.last + 1] + 1) / 2
    positives = drawn @ label
    negatives = drawn.sum(axis=1) - positives
    wins = (drawn * rank) @ label - positives * (positives + 1) / 2
    pairs = positives * negatives
    auc = np.full(len(weights), np.nan)
    defined = pairs > 0
    auc[defined] = wins[defined] / pairs[defined]
    return auc


def _resampled_average_precision(y: np.ndarray, ranking: Ranking, weights: np.ndarray) -> np.ndarray:
    """Average precision as scikit-learn defines it, resample by resample.

    Each distinct probability is one threshold; at it, the rows at or above it are called
    positive. AP sums the precision at each threshold times the recall it adds over the one
    above. With the rows sorted once, the counts at or above a threshold are a resample's
    totals minus its running counts below that threshold's run of ties. A threshold none of
    whose rows were drawn adds no recall, so it adds nothing, as in a resample scored alone.
    """
    drawn = weights[:, ranking.order]
    label = y[ranking.order].astype(np.float64)
    starts = np.flatnonzero(ranking.before + 1 == np.arange(len(label)))  # first sorted position of each run
    zero = np.zeros((len(drawn), 1))
    below_all = np.concatenate([zero, np.cumsum(drawn, axis=1)], axis=1)[:, starts]
    below_positive = np.concatenate([zero, np.cumsum(drawn * label, axis=1)], axis=1)[:, starts]
    positives = drawn @ label
    # Columns from the highest threshold down: rows and positives called positive at each.
    called = (drawn.sum(axis=1)[:, None] - below_all)[:, ::-1]
    hits = (positives[:, None] - below_positive)[:, ::-1]
    added = np.diff(hits, axis=1, prepend=0.0)
    precision = np.divide(hits, called, out=np.zeros_like(hits), where=called > 0)
    ap = np.full(len(weights), np.nan)
    defined = positives > 0
    ap[defined] = (added * precision).sum(axis=1)[defined] / positives[defined]
    return ap


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
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
) -> Interval:
    """``metric`` on all rows with its percentile bootstrap interval."""
    intervals = bootstrap_cis(
        y_true, probability, (metric,), n_resamples=n_resamples, seed=seed, level=level, threshold=threshold
    )
    return intervals[metric]


def bootstrap_cis(
    y_true: np.ndarray,
    probability: np.ndarray,
    metrics: tuple[str, ...] = METRICS,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
) -> dict[str, Interval]:
    """Intervals for several metrics, all over the same resamples."""
    samples = _resampled(y_true, (probability,), metrics, n_resamples=n_resamples, seed=seed, thresholds=(threshold,))
    estimates = classification_metrics(y_true, probability, threshold)
    return {metric: _interval(estimates[metric], samples[(0, metric)], level) for metric in metrics}


def paired_bootstrap_difference(
    y_true: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    metric: str,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    threshold: float = 0.5,
    threshold_old: float | None = None,
) -> Interval:
    """How much better the new model is than the old, scored on the same resampled rows.

    The difference is oriented so that positive always means "new is better", for loss-type
    and score-type metrics alike; pairing the rows cancels the noise both models share,
    which is what makes a real improvement visible on a small test split. Each model labels
    at its own threshold (``threshold_old`` defaults to ``threshold``).
    """
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    old_threshold = threshold if threshold_old is None else threshold_old
    samples = _resampled(
        y_true,
        (p_new, p_old),
        (metric,),
        n_resamples=n_resamples,
        seed=seed,
        thresholds=(threshold, old_threshold),
    )
    new, old = samples[(0, metric)], samples[(1, metric)]
    estimate = sign * (
        classification_metrics(y_true, p_new, threshold)[metric]
        - classification_metrics(y_true, p_old, old_threshold)[metric]
    )
    return _interval(estimate, sign * (new - old), level)
