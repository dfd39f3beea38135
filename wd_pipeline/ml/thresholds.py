"""The decision threshold: the probability from which a row is labelled positive.

0.5 is right only when both kinds of error cost the same and the classes are about equally
common. ``--threshold auto`` chooses it instead on the validation predictions of the chosen
(mode, λ) — with k folds, the k validation folds together, so every development row is
predicted once by a model that did not train on it — by the metric a user names. The test
split is never looked at, so the test metrics at the chosen threshold stay honest.

Candidates are the midpoints between consecutive distinct predicted probabilities, plus one
below the lowest and one above the highest, so every labelling the predictions allow is
tried once and a chosen threshold never sits exactly on a validation row's probability.
When several candidates reach the best value, the one closest to 0.5 wins (the lower of two
equally close): among equally good thresholds, the least surprising one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wd_pipeline.config import DEFAULT_THRESHOLD
from wd_pipeline.ml.metrics import PROBABILITY_CLIP

THRESHOLD_METRICS = ("f1", "accuracy", "balanced_accuracy", "youden")
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class DecisionThreshold:
    """The threshold a model labels with, and how it came about.

    ``metric`` is None for a threshold fixed by ``--threshold``; otherwise the metric it
    maximised, its value on the validation predictions, how many rows those were, and how
    many candidates tied for the best value.
    """

    value: float = DEFAULT_THRESHOLD
    metric: str | None = None
    score: float | None = None
    rows: int = 0
    tied: int = 0

    @classmethod
    def fixed(cls, value: float) -> DecisionThreshold:
        return cls(value=float(value))

    @property
    def chosen(self) -> bool:
        return self.metric is not None

    @property
    def source(self) -> str:
        """The ``threshold.metric`` tag: the metric that chose it, or ``fixed``."""
        return self.metric or "fixed"

    def describe(self) -> str:
        """One sentence for logs and the model card."""
        if not self.chosen:
            return f"{self.value:g}, fixed by --threshold"
        ties = f"; {self.tied} thresholds tied, the one closest to 0.5 kept" if self.tied > 1 else ""
        return (
            f"{self.value:.4g}, chosen by --threshold auto: maximum {self.metric} ({self.score:.4f}) on "
            f"{self.rows} out-of-fold validation predictions{ties}"
        )


def choose_threshold(y_true: np.ndarray, probability: np.ndarray, metric: str) -> DecisionThreshold:
    """The candidate threshold that maximises ``metric`` on these predictions (ties: closest to 0.5)."""
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"unknown threshold metric {metric!r}; expected one of {THRESHOLD_METRICS}")
    y = np.asarray(y_true).astype(int).ravel()
    # Clipped as the metrics clip, which also keeps every candidate strictly inside (0, 1).
    p = np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    positives = int(y.sum())
    if positives in (0, len(y)):
        raise ValueError("choosing a threshold needs validation rows of both classes")
    candidates, tp, fp = labellings(y, p)
    fn, tn = positives - tp, (len(y) - positives) - fp
    values = threshold_metric(metric, tp, fp, fn, tn)
    best = values.max()
    tied = np.flatnonzero(values >= best - TIE_TOLERANCE)
    # Closest to 0.5; ``argmin`` keeps the first, and candidates rise, so the lower of two equally close.
    pick = tied[np.argmin(np.abs(candidates[tied] - DEFAULT_THRESHOLD))]
    return DecisionThreshold(
        value=float(candidates[pick]), metric=metric, score=float(values[pick]), rows=len(y), tied=len(tied)
    )


def labellings(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate thresholds, rising; true and false positives of ``p >= candidate`` at each)."""
    distinct = np.unique(p)
    candidates = np.concatenate([[distinct[0] / 2], (distinct[:-1] + distinct[1:]) / 2, [(distinct[-1] + 1) / 2]])
    # Rows at or above a candidate: those whose probability is not below it.
    below = np.searchsorted(np.sort(p), candidates, side="left")
    below_positive = np.searchsorted(np.sort(p[y == 1]), candidates, side="left")
    called = len(p) - below
    tp = (int(y.sum()) - below_positive).astype(np.float64)
    return candidates, tp, called - tp


def threshold_metric(metric: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """``metric`` of each labelling from its confusion counts."""
    if metric == "f1":
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if metric == "accuracy":
        return (tp + tn) / (tp + fp + fn + tn)
    sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
    if metric == "balanced_accuracy":
        return (sensitivity + specificity) / 2
    if metric == "youden":
        return sensitivity + specificity - 1
    raise ValueError(f"unknown threshold metric {metric!r}; expected one of {THRESHOLD_METRICS}")
