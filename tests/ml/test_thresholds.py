"""--threshold auto: each metric picks the labelling it should, ties go to the threshold closest to 0.5."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from wd_pipeline.config import ThresholdMetric
from wd_pipeline.ml.thresholds import THRESHOLD_METRICS, DecisionThreshold, choose_threshold


def rare_positives() -> tuple[np.ndarray, np.ndarray]:
    """Two positives (0.3 and 0.9) among twenty negatives: fifteen at 0.1 and five at 0.5.

    Calling only 0.9 positive misses one positive and no negative; calling 0.3 and above
    catches both positives and five negatives.
    """
    p = np.array([0.9, 0.3] + [0.5] * 5 + [0.1] * 15)
    y = np.array([1, 1] + [0] * 20)
    return y, p


@pytest.mark.parametrize(
    ("metric", "threshold", "score"),
    [
        ("f1", 0.7, 2 / 3),  # (0.5 + 0.9) / 2: the five negatives at 0.5 cost more F1 than the second positive adds
        ("accuracy", 0.7, 21 / 22),
        ("balanced_accuracy", 0.2, (1 + 15 / 20) / 2),  # (0.1 + 0.3) / 2: both positives, at 5 false alarms
        ("youden", 0.2, 1 + 15 / 20 - 1),
    ],
)
def test_each_metric_picks_its_own_threshold(metric: str, threshold: float, score: float) -> None:
    y, p = rare_positives()
    chosen = choose_threshold(y, p, metric)
    assert chosen.value == pytest.approx(threshold)
    assert chosen.score == pytest.approx(score)
    assert (chosen.metric, chosen.rows, chosen.tied) == (metric, 22, 1)


def test_a_tie_goes_to_the_threshold_closest_to_one_half() -> None:
    # Accuracy 22/23 either way: call only 0.9 positive (t = 0.7) or 0.9, 0.5 and 0.3 (t = 0.2).
    p = np.array([0.9, 0.3, 0.5] + [0.1] * 20)
    y = np.array([1, 1, 0] + [0] * 20)
    chosen = choose_threshold(y, p, "accuracy")
    assert chosen.value == pytest.approx(0.7) and chosen.tied == 2
    assert "2 thresholds tied, the one closest to 0.5 kept" in chosen.describe()


def test_of_two_equally_close_thresholds_the_lower_wins() -> None:
    # Accuracy 3/4 at 0.1875 (between 0.125 and 0.25) and at 0.8125 (between 0.75 and 0.875), both 0.3125 from 0.5.
    chosen = choose_threshold(np.array([0, 1, 0, 1]), np.array([0.125, 0.25, 0.75, 0.875]), "accuracy")
    assert chosen.value == 0.1875 and chosen.tied == 2


@pytest.mark.parametrize("metric", THRESHOLD_METRICS)
def test_no_threshold_on_a_fine_grid_does_better_than_the_chosen_one(metric: str) -> None:
    from sklearn import metrics

    scorers = {
        "f1": lambda y, label: metrics.f1_score(y, label, zero_division=0),
        "accuracy": metrics.accuracy_score,
        "balanced_accuracy": metrics.balanced_accuracy_score,
        "youden": lambda y, label: 2 * metrics.balanced_accuracy_score(y, label) - 1,
    }
    rng = np.random.default_rng(7)
    y = (rng.random(300) < 0.1).astype(int)
    p = np.clip(0.25 * y + rng.beta(2, 5, 300), 0, 1)
    chosen = choose_threshold(y, p, metric)
    score = scorers[metric]
    assert chosen.score == pytest.approx(score(y, (p >= chosen.value).astype(int)))
    best_on_grid = max(score(y, (p >= t).astype(int)) for t in np.linspace(0.005, 0.995, 199))
    assert chosen.score >= best_on_grid - 1e-12
    assert chosen.value != 0.5 and 0 < chosen.value < 1


def test_an_all_negative_labelling_is_a_candidate_and_stays_inside_zero_one() -> None:
    # One positive ranked below every negative: accuracy is best calling nothing positive.
    chosen = choose_threshold(np.array([1, 0, 0, 0]), np.array([0.0, 0.6, 0.8, 1.0]), "accuracy")
    assert chosen.score == 0.75 and 1.0 > chosen.value > 1 - 1e-7


def test_validation_rows_of_one_class_are_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(5), np.linspace(0, 1, 5), "f1")


def test_the_metrics_are_the_settings_choices() -> None:
    assert get_args(get_args(ThresholdMetric)[0]) == THRESHOLD_METRICS


def test_a_fixed_threshold_says_so() -> None:
    fixed = DecisionThreshold.fixed(0.3)
    assert (fixed.value, fixed.chosen, fixed.source) == (0.3, False, "fixed")
    assert fixed.describe() == "0.3, fixed by --threshold"
