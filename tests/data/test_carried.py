"""Carried columns: slice and group columns travel in the splits beside the features, and never become features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wd_pipeline.config import make_config
from wd_pipeline.data import splits
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.errors import DataError

ROWS = 200


def source(tmp_path: Path) -> Path:
    """A row id, two features, a text slice column with a gap, a numeric slice column and a group column."""
    rng = np.random.default_rng(3)
    city = [f"c{i % 4}" for i in range(ROWS)]
    city[7] = None
    frame = pd.DataFrame(
        {
            "row": np.arange(ROWS, dtype=np.float64),
            "a": rng.normal(size=ROWS),
            "b": rng.normal(size=ROWS),
            "city": city,
            "age": np.where(np.arange(ROWS) == 11, np.nan, np.arange(ROWS) % 50),
            "team": np.arange(ROWS) // 10,
            "y": np.arange(ROWS) % 2,
        }
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "carried.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def prepare(tmp_path: Path, **settings) -> Path:
    base = {"label": "y", "positive_class": None, "work_dir": str(tmp_path / "work"), "data": str(source(tmp_path))}
    return splits.prepare(make_config(**{**base, **settings}))


def test_schema_round_trip_keeps_carried_columns_apart_from_features() -> None:
    schema = TableSchema(
        "y", (ColumnSpec("a", Role.NUMERIC, "double"),), (ColumnSpec("city", Role.CATEGORICAL, "string"),)
    )
    raw = schema.to_dict()
    assert TableSchema.from_dict(raw) == schema
    assert (schema.names(), schema.carried_names()) == (["a"], ["city"])
    plain = TableSchema("y", (ColumnSpec("a", Role.NUMERIC, "double"),))
    assert "carried" not in plain.to_dict()
    assert TableSchema.from_dict(plain.to_dict()).carried == ()


def test_slice_and_group_columns_are_carried_never_features(tmp_path: Path) -> None:
    folder = prepare(
        tmp_path,
        slice_by=["city", "age"],
        group_column="team",
        features=["row", "a", "b", "age", "team"],
        exclude=["city"],
    )
    schema = splits.read_schema(folder)
    assert schema.names() == ["row", "a", "b"]
    assert [(spec.name, spec.role) for spec in schema.carried] == [
        ("city", Role.CATEGORICAL),
        ("age", Role.NUMERIC),
        ("team", Role.NUMERIC),
    ]
    manifest = splits.read_manifest(folder)
    assert manifest["features"] == ["row", "a", "b"]
    assert "city" not in [column["name"] for column in manifest["dropped_columns"]]
    for name in splits.SPLITS:
        part = splits.load_split(folder, name)
        assert list(part.carried.columns) == ["city", "age", "team"]
        rows = part.features["row"].to_numpy().astype(int)
        assert part.carried["team"].tolist() == (rows // 10).astype(float).tolist()
        expected_city = [None if row == 7 else f"c{row % 4}" for row in rows]
        assert part.carried["city"].dtype == object and part.carried["city"].tolist() == expected_city
        assert part.carried["age"].dtype == np.float64
        assert np.isnan(part.carried["age"].to_numpy()[rows == 11]).all()


def test_take_and_concat_keep_carried_rows_aligned(tmp_path: Path) -> None:
    folder = prepare(tmp_path, slice_by=["city"], group_column="team")
    train, validation = splits.load_split(folder, "train"), splits.load_split(folder, "validation")
    both = splits.concat([train, validation])
    picked = splits.take(both, np.array([len(both) - 1, 0, 5]))
    for part in (both, picked):
        assert len(part.carried) == len(part)
        rows = part.features["row"].to_numpy().astype(int)
        assert part.carried["team"].tolist() == (rows // 10).astype(float).tolist()


def test_categorical_setting_applies_to_a_carried_column(tmp_path: Path) -> None:
    folder = prepare(tmp_path, group_column="team", categorical=["team"])
    schema = splits.read_schema(folder)
    assert schema.carried == (ColumnSpec("team", Role.CATEGORICAL, "int64"),)
    assert splits.load_split(folder, "test").carried["team"].map(type).eq(str).all()


def test_a_run_without_carried_columns_has_an_empty_carried_frame(tmp_path: Path) -> None:
    folder = prepare(tmp_path)
    part = splits.load_split(folder, "train")
    assert len(part.carried.columns) == 0 and len(part.carried) == len(part)
    assert splits.read_schema(folder).carried == ()
    assert len(splits.take(part, np.arange(4)).carried) == 4
    assert len(pq.read_schema(folder / "train.parquet").names) == len(splits.read_schema(folder).names()) + 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"slice_by": ["cty"]},
            "--slice-by names column 'cty' that is not in the data; columns are "
            "['row', 'a', 'b', 'city', 'age', 'team', 'y']. Did you mean 'city'? Pass --slice-by with a column of the header",
        ),
        (
            {"group_column": "Team"},
            "--group-column names column 'Team' that is not in the data; columns are "
            "['row', 'a', 'b', 'city', 'age', 'team', 'y']. Did you mean 'team'? "
            "Pass --group-column with a column of the header",
        ),
    ],
)
def test_a_carried_column_not_in_the_data_is_refused(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, **settings)
    assert str(caught.value) == message


# Carried slice and group columns; or none, the text column a feature.
@pytest.mark.parametrize("settings", [{"slice_by": ["city"], "group_column": "team"}, {}])
def test_reading_train_and_validation_as_one_equals_their_concatenation(tmp_path: Path, settings: dict) -> None:
    folder = prepare(tmp_path, **settings)
    expected = splits.concat([splits.load_split(folder, "train"), splits.load_split(folder, "validation")])
    read = splits.read_splits(folder, ["train", "validation"])
    pd.testing.assert_frame_equal(read.features, expected.features)
    np.testing.assert_array_equal(read.label, expected.label)
    assert read.label.dtype == expected.label.dtype
    pd.testing.assert_frame_equal(read.carried, expected.carried)


@pytest.mark.parametrize("rows", [5, ROWS])  # fewer rows than the split; more
def test_a_splits_head_is_its_first_rows_as_the_whole_reads_them(tmp_path: Path, rows: int) -> None:
    folder = prepare(tmp_path, slice_by=["city"])
    whole = splits.load_split(folder, "validation")
    head = splits.read_split_head(folder, "validation", rows)
    kept = min(rows, len(whole))
    pd.testing.assert_frame_equal(head.features, whole.features.iloc[:kept])
    pd.testing.assert_frame_equal(head.carried, whole.carried.iloc[:kept])
    np.testing.assert_array_equal(head.label, whole.label[:kept])
