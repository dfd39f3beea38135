"""The metrics the pipeline reports, computed from predicted probabilities with scikit-learn.

Never read from Keras' ``val_loss``: that value includes the L2 penalty and would always
favour λ = 0.
"""

from __future__ import annotations

import numpy as np

from wd_pipeline.config import HIGHER_IS_BETTER

METRICS = ("accuracy", "roc_auc", "average_precision", "log_loss", "precision", "recall", "f1", "brier")
PROBABILITY_CLIP = 1e-7


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The metrics the pipeline reports (:data:`METRICS`), for one set of predictions.

    ``average_precision`` is scikit-learn's step-wise area under the precision-recall curve;
    unlike ROC AUC it moves with the positive rate, so a rare positive class shows in it.
    """
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
        "average_precision": float(metrics.average_precision_score(y_true, probability)),
        "log_loss": float(metrics.log_loss(y_true, probability, labels=[0, 1])),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "brier": float(metrics.brier_score_loss(y_true, probability)),
    }


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better: a tie never counts as an improvement."""
    return candidate > reference if HIGHER_IS_BETTER[metric] else candidate < reference
