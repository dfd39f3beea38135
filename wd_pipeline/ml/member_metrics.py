"""The pipeline's metrics (:data:`~wd_pipeline.ml.metrics.METRICS`) for every member of a packed model in one pass.

A packed model hands back one row of probabilities per member on the same rows; scoring each
through scikit-learn's metric functions repeats their input checks and sorts the rows once
per ranking metric, which at hundreds of thousands of rows costs more than the training
of a member. Here each member's rows are sorted once, and ROC AUC and average precision are
read off the same cumulative counts, by the definitions scikit-learn uses: the trapezoidal
area under the ROC curve and the step-wise area under the precision-recall curve, both
over the distinct scores (tied scores form one step). ``tests/ml/test_member_metrics.py``
checks them against :func:`~wd_pipeline.ml.metrics.classification_metrics`.
"""

from __future__ import annotations

import numpy as np

from wd_pipeline.ml.metrics import PROBABILITY_CLIP, classification_metrics


def members_metrics(y_true: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> list[dict[str, float]]:
    """Each member's metrics on the same rows: ``probabilities`` is (members, rows), one dict per member.

    Rows of a single class leave ROC AUC undefined; then each member is scored by
    :func:`classification_metrics`, which reports that as its own error.
    """
    y = np.asarray(y_true).astype(int).ravel()
    probabilities = np.asarray(probabilities)
    if y.size == 0 or y.min() == y.max():
        return [classification_metrics(y, row, threshold) for row in probabilities]
    return [_metrics(y, row, threshold) for row in probabilities]


def _metrics(y: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    p = np.clip(np.asarray(probability, dtype=np.float64).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    positive = y == 1
    predicted = p >= threshold
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    auc, average_precision = _ranking(y, p)
    return {
        "accuracy": float(np.mean(predicted == positive)),
        "roc_auc": auc,
        "average_precision": average_precision,
        "log_loss": float(-np.mean(np.where(positive, np.log(p), np.log1p(-p)))),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "brier": float(np.mean((p - y) ** 2)),
    }


def _ranking(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, average precision) from one descending sort of the scores."""
    order = np.argsort(-p)
    scores, labels = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    auc = float(np.trapezoid(tpr, fpr))
    precision = tps / (tps + fps)
    average_precision = float(np.sum(np.diff(tpr) * precision))
    return auc, average_precision
