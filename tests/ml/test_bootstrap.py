"""Bootstrap intervals: they hold the estimate, shrink with data, and a model ties itself."""

from __future__ import annotations

import numpy as np
import pytest

from wd_pipeline.ml import bootstrap
from wd_pipeline.ml.metrics import METRICS, classification_metrics


def predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fair but imperfect classifier: informative probabilities with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, p


@pytest.mark.parametrize("metric", METRICS)
def test_vectorised_metrics_match_scikit_learn_on_every_resample(metric: str) -> None:
    y, p = predictions(50)
    rows = bootstrap.resample_indices(len(y), 20, seed=3)
    values = bootstrap.resampled_metric(y, p, rows, metric)
    expected = [classification_metrics(y[r], p[r])[metric] for r in rows]
    np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_interval_contains_the_estimate(metric: str) -> None:
    y, p = predictions(114)
    interval = bootstrap.bootstrap_ci(y, p, metric, seed=1)
    assert interval.estimate == pytest.approx(classification_metrics(y, p)[metric])
    assert interval.low <= interval.estimate <= interval.high
    assert interval.low < interval.high


def test_interval_narrows_with_more_rows() -> None:
    small = bootstrap.bootstrap_ci(*predictions(100), "roc_auc")
    large = bootstrap.bootstrap_ci(*predictions(2000), "roc_auc")
    assert large.high - large.low < 0.5 * (small.high - small.low)


def test_single_class_resamples_are_skipped_for_roc_auc() -> None:
    y = np.array([1] + [0] * 9)  # many resamples miss the one positive row
    p = np.linspace(0.9, 0.0, 10)
    interval = bootstrap.bootstrap_ci(y, p, "roc_auc", n_resamples=500)
    assert 0 < interval.resamples < 500
    assert np.isfinite(interval.low) and interval.high <= 1.0


def test_paired_difference_of_identical_predictions_is_exactly_zero() -> None:
    y, p = predictions(114)
    for metric in METRICS:
        difference = bootstrap.paired_bootstrap_difference(y, p, p.copy(), metric)
        assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("metric", ["log_loss", "roc_auc", "brier", "accuracy"])
def test_paired_difference_is_positive_when_new_is_better(metric: str) -> None:
    y, weak = predictions(114)
    strong = np.clip(0.7 * y + 0.3 * np.random.default_rng(9).random(len(y)), 0, 1)
    better = bootstrap.paired_bootstrap_difference(y, strong, weak, metric)
    worse = bootstrap.paired_bootstrap_difference(y, weak, strong, metric)
    assert better.low > 0 and better.estimate > 0
    assert worse.high < 0
    assert better.estimate == pytest.approx(-worse.estimate)


def test_same_seed_same_interval() -> None:
    y, p = predictions(80)
    assert bootstrap.bootstrap_ci(y, p, "f1", seed=5) == bootstrap.bootstrap_ci(y, p, "f1", seed=5)


def test_resampled_average_precision_matches_scikit_learn_with_ties_and_rare_positives() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    y = np.zeros(30, dtype=int)
    y[:2] = 1  # rare: some resamples draw no positive row
    p = np.round(0.3 * y + 0.7 * rng.random(30), 1)  # one decimal: many rows share a probability
    rows = bootstrap.resample_indices(len(y), 200, seed=5)
    values = bootstrap.resampled_metric(y, p, rows, "average_precision")
    has_positive = y[rows].any(axis=1)
    assert has_positive.sum() > 100 and (~has_positive).any()
    expected = [average_precision_score(y[r], p[r]) for r in rows[has_positive]]
    np.testing.assert_allclose(values[has_positive], expected, rtol=1e-9, atol=1e-12)
    assert np.isnan(values[~has_positive]).all()  # undefined without a positive row, and skipped


def test_average_precision_interval_of_a_rare_class_skips_resamples_without_positives() -> None:
    y = np.array([1, 0, 1] + [0] * 17)  # one negative ranks between the two positives
    p = np.linspace(0.95, 0.05, 20)
    interval = bootstrap.bootstrap_ci(y, p, "average_precision", n_resamples=500)
    assert interval.estimate == pytest.approx((1 + 2 / 3) / 2) and interval.high == 1.0
    assert 0 < interval.resamples < 500 and 0 < interval.low < 1


def test_paired_difference_labels_each_model_at_its_own_threshold() -> None:
    y, p = predictions(114)
    at_own = bootstrap.paired_bootstrap_difference(y, p, p.copy(), "accuracy", threshold=0.4, threshold_old=0.7)
    expected = classification_metrics(y, p, 0.4)["accuracy"] - classification_metrics(y, p, 0.7)["accuracy"]
    assert at_own.estimate == pytest.approx(expected) and expected != 0
    # A metric of probabilities alone does not move with the thresholds.
    assert bootstrap.paired_bootstrap_difference(y, p, p.copy(), "log_loss", threshold=0.4, threshold_old=0.7).high == 0


def test_a_large_split_draws_fewer_resamples_and_the_interval_says_how_many() -> None:
    assert bootstrap.affordable_resamples(50_000, 1000) == 1000
    assert bootstrap.affordable_resamples(200_000, 1000) == 250
    assert bootstrap.affordable_resamples(2_000_000, 1000) == bootstrap.MIN_RESAMPLES == 100  # the floor
    assert bootstrap.affordable_resamples(10_000_000, 40) == 40  # never more than asked for


def test_the_cap_reaches_every_interval_of_a_split(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p = predictions(2_000)
    monkeypatch.setattr(bootstrap, "MAX_RESAMPLED_CELLS", 2_000 * 150)
    assert {i.resamples for i in bootstrap.bootstrap_cis(y, p, ("log_loss", "accuracy")).values()} == {150}
    assert bootstrap.paired_bootstrap_difference(y, p, p[::-1].copy(), "log_loss").resamples == 150
