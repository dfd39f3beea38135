"""Scoring every member in one pass gives what scikit-learn's metrics give one member at a time."""

from __future__ import annotations

import numpy as np
import pytest

from wd_pipeline.ml.member_metrics import members_metrics
from wd_pipeline.ml.metrics import METRICS, classification_metrics


def test_every_metric_of_every_member_matches_classification_metrics() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.3).astype(int)
    scores = [
        rng.random(3000),  # no ties
        np.round(rng.random(3000), 1),  # many ties: tied scores are one step of both curves
        np.clip(0.3 + 0.4 * y + rng.normal(scale=0.2, size=3000), 0, 1),  # informative, clipped at 0 and 1
        np.full(3000, 0.2),  # one score for every row, all predicted negative
    ]
    for row, got in zip(scores, members_metrics(y, np.stack(scores)), strict=True):
        expected = classification_metrics(y, row)
        assert sorted(got) == sorted(METRICS)
        for name in METRICS:
            assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_rows_of_one_class_are_scored_as_classification_metrics_scores_them() -> None:
    y = np.zeros(10, dtype=int)
    rows = np.stack([np.full(10, 0.3), np.linspace(0.1, 0.9, 10)])
    for row, got in zip(rows, members_metrics(y, rows), strict=True):
        expected = classification_metrics(y, row)
        for name in METRICS:
            np.testing.assert_equal(got[name], expected[name], err_msg=name)
