"""Sliced evaluation: bins from the training split, metrics per test slice, small slices marked, the worst named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wd_pipeline.config import make_config
from wd_pipeline.ml import report as model_report
from wd_pipeline.ml import slices
from wd_pipeline.ml.metrics import classification_metrics
from wd_pipeline.tracking.registry import GatePolicy, floor_violations


def carried(rows: int, seed: int = 0) -> pd.DataFrame:
    """A categorical column with gaps and a numeric one with gaps, as ``LabeledData.carried`` holds them."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["female", "male"], size=rows).astype(object)
    sex[rng.random(rows) < 0.05] = None
    age = rng.uniform(18, 90, size=rows)
    age[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame({"sex": sex, "age": age})


def test_numeric_bins_are_training_quartiles_with_readable_labels() -> None:
    train = pd.DataFrame({"age": [10.0, 20.0, 30.0, 40.0, 50.0, np.nan]})
    (definition,) = slices.define_slices(train, ["age"])
    assert definition.numeric and definition.edges == (20.0, 30.0, 40.0)
    assert definition.bin_labels() == ["< 20", "[20, 30)", "[30, 40)", "≥ 40"]
    test = pd.Series([5.0, 20.0, 29.9, 30.0, 45.0, 100.0, np.nan])
    assert list(definition.assign(test)) == ["< 20", "[20, 30)", "[20, 30)", "[30, 40)", "≥ 40", "≥ 40", "<missing>"]


def test_coinciding_quantiles_give_fewer_bins() -> None:
    train = pd.DataFrame({"children": [0.0] * 80 + [1.0] * 10 + [3.0] * 10})
    (definition,) = slices.define_slices(train, ["children"])
    assert definition.edges == (0.0,)  # all three quartiles are 0
    assert definition.bin_labels() == ["< 0", "≥ 0"]


def test_edges_are_printed_with_enough_digits_to_tell_them_apart() -> None:
    definition = slices.SliceDefinition("x", numeric=True, edges=(1.00001, 1.00002))
    assert definition.bin_labels() == ["< 1.00001", "[1.00001, 1.00002)", "≥ 1.00002"]


def test_categories_slice_as_they_are_and_a_gap_is_its_own_slice() -> None:
    (definition,) = slices.define_slices(pd.DataFrame({"sex": ["f", "m", None]}, dtype=object), ["sex"])
    assert not definition.numeric
    labels = definition.assign(pd.Series(["m", None, "f", "x"], dtype=object))
    assert list(labels) == ["m", "<missing>", "f", "x"]  # a category unseen in training still gets its slice
    assert definition.ordered(list(labels)) == ["f", "m", "x", "<missing>"]


def test_each_slice_holds_the_metrics_of_its_own_rows_with_intervals() -> None:
    train, test = carried(400, seed=1), carried(300, seed=2)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1)
    report = slices.slice_metrics(
        slices.define_slices(train, ["sex", "age"]), test, y, p, min_rows=30, threshold=0.4, n_resamples=200, seed=5
    )
    by_name = {s.name: s for s in report.slices}
    female = (test["sex"] == "female").to_numpy()
    expected = classification_metrics(y[female], p[female], threshold=0.4)
    assert by_name["sex=female"].rows == female.sum() and by_name["sex=female"].positives == y[female].sum()
    for metric in slices.SLICE_METRICS:
        interval = getattr(by_name["sex=female"], metric)
        assert interval.estimate == pytest.approx(expected[metric])
        assert interval.low <= interval.estimate <= interval.high
    # every column's slices cover every test row once
    for column in ("sex", "age"):
        assert sum(s.rows for s in report.slices if s.column == column) == 300
    assert [s.value for s in report.slices if s.column == "age"][-1] == "<missing>"
    rows = report.rows()
    assert {"column", "slice", "rows", "positives", "roc_auc", "roc_auc_ci_low", "small", "worst"} <= set(rows[0])


def test_small_slices_are_marked_and_never_hidden_nor_worst() -> None:
    test = pd.DataFrame({"group": ["big"] * 100 + ["tiny"] * 10}, dtype=object)
    y = np.array([0, 1] * 50 + [0, 1] * 5)
    p = np.r_[np.where(y[:100] == 1, 0.8, 0.2), np.where(y[100:] == 1, 0.2, 0.8)]  # tiny is ranked backwards
    report = slices.slice_metrics(
        slices.define_slices(test, ["group"]), test, y, p, min_rows=30, threshold=0.5, n_resamples=100
    )
    tiny = next(s for s in report.slices if s.value == "tiny")
    assert tiny.small and tiny.roc_auc.estimate == 0.0
    assert report.worst.value == "big"  # the tiny slice is worse but too small to name
    assert [s.value for s in report.gated()] == ["big"]


def test_the_worst_slice_is_the_lowest_roc_auc_and_a_single_class_slice_has_none() -> None:
    rng = np.random.default_rng(0)
    groups = np.array(["a"] * 200 + ["b"] * 200 + ["c"] * 50, dtype=object)
    y = np.r_[rng.integers(0, 2, 400), np.zeros(50, dtype=int)]
    noise = np.r_[np.full(200, 0.1), np.full(200, 0.6), np.full(50, 0.3)]  # b is noisier than a
    p = np.clip(0.5 * y + 0.25 + noise * rng.normal(size=450), 0.01, 0.99)
    frame = pd.DataFrame({"g": groups})
    report = slices.slice_metrics(
        slices.define_slices(frame, ["g"]), frame, y, p, min_rows=30, threshold=0.5, n_resamples=100
    )
    c = next(s for s in report.slices if s.value == "c")
    assert c.roc_auc is None and c.positives == 0 and np.isnan(c.row()["roc_auc"])
    assert c.log_loss.low <= c.log_loss.estimate <= c.log_loss.high
    assert report.worst.value == "b"
    assert [row["worst"] for row in report.rows()] == [False, True, False]


def test_a_tie_goes_to_the_slice_listed_first() -> None:
    frame = pd.DataFrame({"g": ["a"] * 40 + ["b"] * 40}, dtype=object)
    y = np.array([0, 1] * 40)
    p = np.where(y == 1, 0.9, 0.1)
    report = slices.slice_metrics(slices.define_slices(frame, ["g"]), frame, y, p, min_rows=30, threshold=0.5)
    assert report.worst.value == "a"


def test_slices_are_seeded() -> None:
    train, test = carried(200), carried(200, seed=9)
    y = np.random.default_rng(1).integers(0, 2, 200)
    p = np.random.default_rng(2).random(200)
    definitions = slices.define_slices(train, ["sex", "age"])
    first = slices.slice_metrics(definitions, test, y, p, min_rows=30, threshold=0.5, n_resamples=100, seed=3)
    again = slices.slice_metrics(definitions, test, y, p, min_rows=30, threshold=0.5, n_resamples=100, seed=3)
    other = slices.slice_metrics(definitions, test, y, p, min_rows=30, threshold=0.5, n_resamples=100, seed=4)
    assert first == again and first != other


def backwards_small_slice() -> slices.SliceReport:
    """``big`` ranked well, ``weak`` ranked near chance, ``tiny`` ranked backwards but small."""
    rng = np.random.default_rng(1)
    groups = np.array(["big"] * 100 + ["weak"] * 60 + ["tiny"] * 10, dtype=object)
    y = np.array([0, 1] * 85)
    p = np.r_[np.where(y[:100] == 1, 0.8, 0.2), rng.random(60), np.where(y[160:] == 1, 0.2, 0.8)]
    frame = pd.DataFrame({"group": groups})
    return slices.slice_metrics(
        slices.define_slices(frame, ["group"]), frame, y, p, min_rows=30, threshold=0.5, n_resamples=100
    )


def test_the_slice_floor_names_each_failing_slice_of_at_least_the_minimum_size() -> None:
    report = backwards_small_slice()
    weak = next(s for s in report.slices if s.value == "weak")
    policy = GatePolicy.from_config(make_config(min_slice_roc_auc=0.7))
    failed = floor_violations({"roc_auc": 0.9, "log_loss": 0.3}, policy, report.slices)
    assert failed == [f"slice group=weak roc_auc {weak.roc_auc.estimate:.4f} < minimum 0.7 (60 rows)"]
    assert (
        floor_violations({"roc_auc": 0.9, "log_loss": 0.3}, GatePolicy.from_config(make_config()), report.slices) == []
    )
    larger = GatePolicy.from_config(make_config(min_slice_roc_auc=0.7, min_slice_rows=80))
    assert floor_violations({"roc_auc": 0.9, "log_loss": 0.3}, larger, report.slices) == []


def test_the_model_card_shows_every_slice_and_names_the_worst() -> None:
    report = backwards_small_slice()
    section = "\n".join(model_report.slices_section(report))
    assert section.startswith("## Slices (test split, 95% bootstrap intervals, 100 resamples, threshold 0.5)")
    assert "**Worst slice**: `group=weak`" in section
    table = [line for line in section.splitlines() if line.startswith("| group |")]
    assert [line.split(" | ")[1] for line in table] == ["big", "tiny", "weak"]  # categories alphabetically
    assert table[1].endswith("| small (< 30 rows) |") and table[2].endswith("| worst |")
    assert model_report.slices_section(None) == []
    axes = model_report.slices_figure(report, floor=0.7).axes[0]
    labels = {label.get_text(): label.get_position()[1] for label in axes.get_yticklabels()}
    assert list(labels) == ["group=big (100)", "group=tiny (10)  small", "group=weak (60)"]
    assert labels["group=big (100)"] > labels["group=weak (60)"]  # drawn top to bottom in table order


def test_slices_of_a_large_split_share_its_capped_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    from wd_pipeline.ml import bootstrap

    test = pd.DataFrame({"group": ["a"] * 300 + ["b"] * 100}, dtype=object)
    y = np.array([0, 1] * 200)
    p = np.clip(0.4 * y + 0.6 * np.random.default_rng(1).random(400), 0, 1)
    monkeypatch.setattr(bootstrap, "MAX_RESAMPLED_CELLS", 400 * 120)  # 120 resamples of the whole split
    report = slices.slice_metrics(
        slices.define_slices(test, ["group"]), test, y, p, min_rows=30, threshold=0.5, n_resamples=1000
    )
    assert report.resamples == 120
    assert {s.log_loss.resamples for s in report.slices} == {120}
