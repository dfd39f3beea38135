"""The schema and the per-split profile: right numbers, and JSON that reads back into the same dataclasses."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from wd_pipeline.data.profile import CategoryShare, DataProfile, SplitProfile, profile_columns, profile_splits
from wd_pipeline.data.schema import ColumnSpec, DroppedColumn, Role, TableSchema

SCHEMA = TableSchema(
    "y",
    (
        ColumnSpec("n", Role.NUMERIC, "int64"),
        ColumnSpec("s", Role.CATEGORICAL, "dictionary<values=string, indices=int32, ordered=0>"),
    ),
)


def sample(rows: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(3.0, 2.0, rows)
    numbers[::7] = np.nan
    words = rng.choice(["a", "b", "c", "d"], rows, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    words[::5] = None
    return pa.table({"n": pa.array(numbers, from_pandas=True), "s": pa.array(words, pa.string())})


def test_schema_reads_back_from_json() -> None:
    assert TableSchema.from_dict(json.loads(json.dumps(SCHEMA.to_dict()))) == SCHEMA
    assert SCHEMA.to_dict()["columns"][1] == {
        "name": "s",
        "role": "categorical",
        "source_type": "dictionary<values=string, indices=int32, ordered=0>",
    }
    assert (SCHEMA.names(), SCHEMA.numeric(), SCHEMA.categorical()) == (["n", "s"], ["n"], ["s"])
    assert DroppedColumn.from_dict(DroppedColumn("id", "constant").to_dict()) == DroppedColumn("id", "constant")
    with pytest.raises(KeyError):
        SCHEMA.column("nope")


def test_numbers_agree_with_pandas() -> None:
    table = sample()
    frame = table.to_pandas()
    numeric, categorical = profile_columns(table, SCHEMA)
    assert (numeric.rows, numeric.missing) == (200, int(frame.n.isna().sum()))
    assert numeric.mean == pytest.approx(frame.n.mean())
    assert numeric.std == pytest.approx(frame.n.std())  # sample standard deviation, as pandas
    assert (numeric.min, numeric.max) == (frame.n.min(), frame.n.max())
    assert numeric.missing_share == pytest.approx(frame.n.isna().mean())
    counts = frame.s.value_counts()
    assert categorical.distinct == 4 and categorical.missing == int(frame.s.isna().sum())
    assert categorical.top[0] == CategoryShare(counts.index[0], int(counts.iloc[0]), counts.iloc[0] / 200)
    assert [share.value for share in categorical.top] == list(counts.index)
    assert (categorical.mean, numeric.distinct, numeric.top) == (None, None, ())


def test_top_categories_are_capped_and_ties_go_alphabetically() -> None:
    table = pa.table({"n": [1.0] * 24, "s": [f"k{i % 12:02d}" for i in range(24)]})
    top = profile_columns(table, SCHEMA, top=3)[1].top
    assert [(share.value, share.count) for share in top] == [("k00", 2), ("k01", 2), ("k02", 2)]


def test_an_empty_split_column_has_no_statistics() -> None:
    table = pa.table({"n": pa.nulls(3, pa.float64()), "s": pa.nulls(3, pa.string())})
    numeric, categorical = profile_columns(table, SCHEMA)
    assert (numeric.mean, numeric.std, numeric.min, numeric.max, numeric.missing_share) == (None, None, None, None, 1.0)
    assert (categorical.distinct, categorical.top) == (0, ())


def test_profile_reads_back_and_reads_well() -> None:
    profile = profile_splits({"train": sample(), "test": sample(50, seed=1)}, SCHEMA)
    again = DataProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    assert isinstance(again.split("test"), SplitProfile) and again.split("test").rows == 50
    rows = profile.table_rows()
    assert len(rows) == 4 and rows[0]["split"] == "train" and rows[0]["column"] == "n"
    assert all(isinstance(value, str) for row in rows for value in row.values())
    text = profile.markdown()
    assert "## train (200 rows)" in text and "## test (50 rows)" in text
    assert "| s | categorical | 20.0 % |" in text
    assert "a 3" in rows[1]["top categories"]  # the most common category first, with its share


def test_dictionary_encoded_text_profiles_like_plain_text() -> None:
    table = sample()
    encoded = table.set_column(1, "s", table.column("s").dictionary_encode())
    assert profile_columns(encoded, SCHEMA) == profile_columns(table, SCHEMA)
