"""Population stability index against the training split's reference: hand-checked numbers, no drift on the same
data, unseen categories and missing values counted, levels from the thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from wd_pipeline.data import drift
from wd_pipeline.data.profile import (
    REFERENCE_CATEGORIES,
    ColumnProfile,
    ColumnReference,
    SplitProfile,
    profile_columns,
)
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema

SCHEMA = TableSchema("y", (ColumnSpec("n", Role.NUMERIC, "double"), ColumnSpec("s", Role.CATEGORICAL, "string")))


def sample(rows: int = 2000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(3.0, 2.0, rows)
    numbers[::9] = np.nan
    words = rng.choice(["a", "b", "c", "d"], rows, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    words[::11] = None
    return pa.table({"n": pa.array(numbers, from_pandas=True), "s": pa.array(words, pa.string())})


def reference_of(table: pa.Table, positive_rate: float | None = None) -> SplitProfile:
    return SplitProfile("train", table.num_rows, profile_columns(table, SCHEMA, reference=True), positive_rate)


def compare(reference: SplitProfile, table: pa.Table, **kwargs) -> drift.DriftReport:
    return drift.compare(reference, table, warn=0.1, alert=0.25, reference_name="m v1", **kwargs)


def hand_psi(expected: list[float], actual: list[float]) -> float:
    return sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def test_reference_bins_are_deciles_and_shares_of_present_values() -> None:
    table = sample()
    numeric, categorical = profile_columns(table, SCHEMA, reference=True)
    present = table.column("n").drop_null().to_numpy()
    assert numeric.reference is not None and len(numeric.reference.edges) == 9
    assert numeric.reference.edges == pytest.approx(np.quantile(present, np.arange(1, 10) / 10, method="lower"))
    assert sum(numeric.reference.shares) == pytest.approx(1.0)
    assert numeric.reference.shares == pytest.approx([0.1] * 10, abs=1e-3)
    assert numeric.reference.missing == pytest.approx(np.isnan(table.column("n").to_numpy()).mean())
    assert categorical.reference is not None
    assert categorical.reference.categories == ("a", "b", "c", "d")
    words = [value for value in table.column("s").to_pylist() if value is not None]
    assert categorical.reference.shares[0] == pytest.approx(words.count("a") / len(words))
    assert (categorical.reference.other, categorical.reference.edges) == (0.0, ())
    assert profile_columns(table, SCHEMA)[0].reference is None  # only asked for on the training split


def test_repeated_values_give_fewer_bins_and_none_below_the_minimum() -> None:
    """A 0/1 column has one cut (at 1): two bins, neither always empty."""
    flags = pa.table({"n": pa.array([0.0] * 70 + [1.0] * 30), "s": pa.array(["a"] * 100)})
    numeric, categorical = profile_columns(flags, SCHEMA, reference=True)
    assert numeric.reference.edges == (1.0,)
    assert numeric.reference.shares == pytest.approx((0.7, 0.3))
    assert categorical.reference.shares == (1.0,)


def test_a_capped_reference_pools_the_rarer_categories() -> None:
    values = [f"c{i:03d}" for i in range(REFERENCE_CATEGORIES + 10)] + ["c000"] * 40
    table = pa.table({"n": pa.array(np.arange(len(values), dtype=float)), "s": pa.array(values)})
    reference = profile_columns(table, SCHEMA, reference=True)[1].reference
    assert len(reference.categories) == REFERENCE_CATEGORIES and reference.categories[0] == "c000"
    assert reference.other == pytest.approx(10 / len(values))
    assert sum(reference.shares) + reference.other == pytest.approx(1.0)


def test_reference_reads_back_from_json() -> None:
    profile = reference_of(sample(), positive_rate=0.25)
    assert SplitProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_the_same_data_has_no_drift() -> None:
    table = sample()
    report = compare(reference_of(table, 0.3), table, label="y", current_label=np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0]))
    assert report.max_psi == pytest.approx(0.0, abs=1e-9)
    assert (report.level, report.drifted, report.skipped) == ("ok", (), ())
    assert [column.column for column in report.columns if column.role == "label"] == ["y"]


def test_another_sample_of_the_same_population_stays_ok() -> None:
    report = compare(reference_of(sample(seed=0)), sample(seed=1))
    assert report.level == "ok" and report.max_psi < 0.02


def test_numeric_psi_matches_a_hand_computation() -> None:
    """Reference: edges (10, 20), shares 0.2 / 0.5 / 0.3 of present values, 10 % missing. Now: 10 rows, 2 below 10,
    2 in [10, 20), 4 from 20 up, 2 missing."""
    reference = SplitProfile(
        "train",
        100,
        (
            ColumnProfile(
                "n",
                Role.NUMERIC,
                100,
                10,
                reference=ColumnReference(missing=0.1, shares=(0.2, 0.5, 0.3), edges=(10, 20)),
            ),
        ),
    )
    now = pa.table({"n": pa.array([1.0, 9.99, 10.0, 19.0, 20.0, 25.0, 30.0, 99.0, None, None])})
    report = compare(reference, now)
    expected = hand_psi([0.18, 0.45, 0.27, 0.1], [0.2, 0.2, 0.4, 0.2])
    (column,) = report.columns
    assert column.psi == pytest.approx(expected)
    assert column.contributors[0].bucket == "[10, 20)"
    assert (column.contributors[0].expected, column.contributors[0].actual) == pytest.approx((0.45, 0.2))


def test_unseen_categories_and_missing_share_count() -> None:
    """Reference: a 60 %, b 40 % of present values, nothing missing. Now: a 3, b 3, z 2 (unseen), 2 missing of 10;
    the empty reference buckets count as the smoothing share."""
    reference = SplitProfile(
        "train",
        50,
        (
            ColumnProfile(
                "s",
                Role.CATEGORICAL,
                50,
                0,
                reference=ColumnReference(missing=0.0, shares=(0.6, 0.4), categories=("a", "b")),
            ),
        ),
    )
    now = pa.table({"s": pa.array(["a", "a", "a", "b", "b", "b", "z", "z", None, None])})
    report = compare(reference, now)
    eps = drift.SMOOTHING
    (column,) = report.columns
    assert column.psi == pytest.approx(hand_psi([0.6, 0.4, eps, eps], [0.3, 0.3, 0.2, 0.2]))
    assert {item.bucket for item in column.contributors} == {drift.UNSEEN, drift.MISSING, "a"}
    assert column.level == "alert"


def test_a_dictionary_encoded_column_counts_like_text() -> None:
    table = sample()
    encoded = table.set_column(1, "s", table.column("s").dictionary_encode())
    assert compare(reference_of(table), encoded).columns == compare(reference_of(table), table).columns


def test_a_shifted_column_is_the_one_named() -> None:
    table = sample()
    shifted = table.set_column(0, "n", pa.compute.add(table.column("n"), 2.0))
    report = compare(reference_of(table), shifted)
    assert report.worst.column == "n" and report.alerts == ("n",)
    assert report.drifted == ("n",)
    assert report.metrics()["drift.psi.n"] == report.max_psi
    assert report.tags() == {"drift.level": "alert", "drift.columns": "n", "drift.reference": "m v1"}
    assert "n" in report.summary() and "alert" in report.summary()
    assert drift.DriftReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_a_changed_positive_rate_is_a_label_row() -> None:
    table = sample()
    report = compare(reference_of(table, 0.3), table, label="y", current_label=np.array([1] * 6 + [0] * 4))
    assert report.drifted == ("y",)
    (label,) = [column for column in report.columns if column.role == "label"]
    assert label.psi == pytest.approx(hand_psi([0.7, 0.3], [0.4, 0.6]))
    assert (report.reference_positive_rate, report.current_positive_rate) == (0.3, 0.6)
    assert "drift.positive_rate" in report.metrics()


def test_columns_on_one_side_only_are_skipped_not_compared() -> None:
    table = sample()
    report = compare(reference_of(table), table.drop_columns(["s"]).append_column("new", pa.array(["x"] * 2000)))
    assert [column.column for column in report.columns] == ["n"]
    assert report.skipped == ("s", "new")


def test_a_numeric_reference_refuses_a_text_column() -> None:
    table = sample()
    text = table.set_column(0, "n", pa.array(["1"] * 2000))
    assert compare(reference_of(table), text).skipped == ("n",)


@pytest.mark.parametrize(
    ("psi", "level"), [(0.0, "ok"), (0.0999, "ok"), (0.1, "warn"), (0.2499, "warn"), (0.25, "alert")]
)
def test_levels_follow_the_thresholds(psi: float, level: str) -> None:
    assert drift.level_of(psi, 0.1, 0.25) == level


def test_rows_are_a_readable_table_largest_psi_first() -> None:
    table = sample()
    shifted = table.set_column(1, "s", pa.array(["d"] * 2000))
    rows = compare(reference_of(table), shifted).rows()
    assert [row["column"] for row in rows] == ["s", "n"]
    assert set(rows[0]) == {"column", "role", "psi", "level", "largest contributions"}
    assert "d 7.9 % → 100.0 %" in rows[0]["largest contributions"].split("; ")


def test_the_model_card_section_comes_right_after_data_and_code() -> None:
    from wd_pipeline.ml.report import with_drift_section

    table = sample()
    report = compare(reference_of(table), table.set_column(0, "n", pa.compute.add(table.column("n"), 2.0)))
    card = "# Model card: m\n\n## Code\n\nc\n\n## Choice of weight decay\n\nx\n\n## Configuration\n"
    with_section = with_drift_section(card, report)
    heading = "## Drift against the champion's training data"
    assert with_section.index("## Code") < with_section.index(heading) < with_section.index("## Choice of weight decay")
    assert "| n | numeric |" in with_section and "alert" in with_section
    assert (
        with_drift_section("# Model card: m\n", report).rstrip().endswith("|")
    )  # no choice section: appended at the end
