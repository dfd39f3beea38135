"""Column roles and missing values at ingest: what reaches the split files, and what is refused with which words."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wd_pipeline.config import make_config
from wd_pipeline.data import splits, validation
from wd_pipeline.data.schema import ColumnSpec, DroppedColumn, Role, TableSchema
from wd_pipeline.errors import DataError

ROWS = 120


def labels(rows: int = ROWS) -> list[int]:
    return [i % 2 for i in range(rows)]


def table(**columns) -> pa.Table:
    """``columns`` plus an alternating 0/1 label ``y``, as an Arrow table."""
    return pa.table({**{name: pa.array(values) if isinstance(values, list) else values for name, values in columns.items()}, "y": labels()})  # fmt: skip


def config(tmp_path: Path, data: Path | None = None, **settings):
    base = {"label": "y", "positive_class": None, "min_rows_per_class": 5, "work_dir": str(tmp_path / "work")}
    return make_config(**{**base, **({"data": str(data)} if data else {}), **settings})


def check(data: pa.Table, tmp_path: Path, **settings) -> validation.CheckedTable:
    return validation.validate(data, config(tmp_path, **settings))


def refused(data: pa.Table, tmp_path: Path, **settings) -> str:
    with pytest.raises(DataError) as caught:
        check(data, tmp_path, **settings)
    return str(caught.value)


def prepare_parquet(data: pa.Table, tmp_path: Path, **settings) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "d.parquet"
    pq.write_table(data, path)
    return splits.prepare(config(tmp_path, path, **settings))


def prepare_csv(text: str, tmp_path: Path, **settings) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text)
    return splits.prepare(config(tmp_path, path, **settings))


def all_rows(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(folder / f"{name}.parquet") for name in splits.SPLITS)


def cycle(values: list, rows: int = ROWS) -> list:
    return [values[i % len(values)] for i in range(rows)]


# --- roles ----------------------------------------------------------------------------------------------------


def test_roles_follow_the_arrow_type(tmp_path: Path) -> None:
    data = table(
        i=pa.array(cycle([1, 2, 3]), pa.int16()),
        f=pa.array(cycle([0.5, 1.5, 2.5]), pa.float32()),
        d=pa.array(cycle(["1.25", "2.50"]), pa.string()).cast(pa.decimal128(6, 2)),
        b=cycle([True, False, True]),
        s=cycle(["red", "green", "blue"]),
        ls=pa.array(cycle(["x", "y"]), pa.large_string()),
        dc=pa.array(cycle(["p", "q", "r"])).dictionary_encode(),
    )
    folder = prepare_parquet(data, tmp_path)
    schema = splits.read_schema(folder)
    assert schema == TableSchema(
        "y",
        (
            ColumnSpec("i", Role.NUMERIC, "int16"),
            ColumnSpec("f", Role.NUMERIC, "float"),
            ColumnSpec("d", Role.NUMERIC, "decimal128(6, 2)"),
            ColumnSpec("b", Role.NUMERIC, "bool"),
            ColumnSpec("s", Role.CATEGORICAL, "string"),
            ColumnSpec("ls", Role.CATEGORICAL, "large_string"),
            ColumnSpec("dc", Role.CATEGORICAL, "dictionary<values=string, indices=int32, ordered=0>"),
        ),
    )
    assert (schema.numeric(), schema.categorical()) == (["i", "f", "d", "b"], ["s", "ls", "dc"])
    written = pq.read_schema(folder / "train.parquet")
    assert [str(written.field(name).type) for name in written.names] == [
        *["double", "float", "double", "double"],
        *["string", "string", "string"],
        "int8",
    ]
    rows = all_rows(folder)
    assert sorted(set(rows.column("b").to_pylist())) == [0.0, 1.0]
    assert sorted(set(rows.column("dc").to_pylist())) == ["p", "q", "r"]
    assert splits.read_manifest(folder)["features"] == schema.names()


def test_categorical_forces_numbers_to_their_text(tmp_path: Path) -> None:
    data = table(zip=cycle([2134, 10001, 94110]), rating=cycle([1.0, 2.5, None]), x=cycle([0.1, 0.2, 0.4]))
    folder = prepare_parquet(data, tmp_path, categorical=["zip", "rating"])
    schema = splits.read_schema(folder)
    assert [(c.name, c.role, c.source_type) for c in schema.columns] == [
        ("zip", Role.CATEGORICAL, "int64"),
        ("rating", Role.CATEGORICAL, "double"),
        ("x", Role.NUMERIC, "double"),
    ]
    rows = all_rows(folder)
    assert set(rows.column("zip").to_pylist()) == {"2134", "10001", "94110"}
    assert set(rows.column("rating").to_pylist()) == {"1", "2.5", None}


def test_excluded_columns_are_not_in_the_splits_and_are_recorded(tmp_path: Path) -> None:
    data = table(id=[f"u{i}" for i in range(ROWS)], when=[datetime.date(2024, 1, 1)] * ROWS, x=cycle([1.0, 2.0]))
    folder = prepare_parquet(data, tmp_path, exclude=["id", "when"])
    assert splits.read_schema(folder).names() == ["x"]
    assert pq.read_schema(folder / "test.parquet").names == ["x", "y"]
    assert splits.read_manifest(folder)["dropped_columns"] == [
        {"name": "id", "reason": "excluded (--exclude)"},
        {"name": "when", "reason": "excluded (--exclude)"},
    ]


def test_features_still_select(tmp_path: Path) -> None:
    data = table(a=cycle([1.0, 2.0]), b=cycle(["u", "v"]), c=cycle([3.0, 4.0]))
    assert check(data, tmp_path, features=["b", "a"]).schema.names() == ["b", "a"]


def test_dates_and_times_are_refused_with_the_exclude_to_pass(tmp_path: Path) -> None:
    data = table(
        x=cycle([1.0, 2.0]),
        day=cycle([datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)]),
        at=pa.array([datetime.datetime(2024, 1, 1)] * ROWS, pa.timestamp("ms")),
    )
    assert refused(data, tmp_path) == (
        "date/time columns ['day (date32[day])', 'at (timestamp[ms])'] cannot be model inputs: "
        "leave them out with --exclude day,at (or derive numeric columns from them first)"
    )
    assert check(data, tmp_path, exclude=["day", "at"]).schema.names() == ["x"]
    forced = check(data, tmp_path, exclude=["at"], categorical=["day"])
    assert forced.features.column("day").to_pylist()[0] == "2024-01-01"


def test_binary_and_nested_columns_are_refused(tmp_path: Path) -> None:
    data = table(x=cycle([1.0, 2.0]), blob=[b"\x00"] * ROWS, tags=[["a"]] * ROWS)
    assert refused(data, tmp_path) == (
        "columns ['blob (binary)', 'tags (list<item: string>)'] have types the model cannot take "
        "(it takes numbers, booleans and text): leave them out with --exclude blob,tags"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"categorical": ["colour"]},
            "--categorical names column 'colour' that is not in the data; columns are ['x', 'color', 'y']. "
            "Did you mean 'color'? Pass --categorical with names of the header",
        ),
        (
            {"exclude": ["ID", "ts"]},
            "--exclude names columns ['ID', 'ts'] that are not in the data; columns are ['x', 'color', 'y']. "
            "Pass --exclude with names of the header",
        ),
        ({"exclude": ["y"]}, "--exclude names the label column 'y': remove it from --exclude"),
        ({"categorical": ["y"]}, "--categorical names the label column 'y': remove it from --categorical"),
        (
            {"categorical": ["color"], "exclude": ["color"]},
            "columns ['color'] are in both --categorical and --exclude: keep each in one of them",
        ),
        (
            {"features": ["x", "color"], "exclude": ["x"]},
            "columns ['x'] are in both --features and --exclude: keep each in one of them",
        ),
    ],
)
def test_column_settings_that_do_not_fit_the_data(settings: dict, message: str, tmp_path: Path) -> None:
    assert refused(table(x=cycle([1.0, 2.0]), color=cycle(["r", "g"])), tmp_path, **settings) == message


# --- missing values -----------------------------------------------------------------------------------------------


def test_csv_gaps_become_nulls_in_every_column(tmp_path: Path) -> None:
    lines = ["n,s,y"] + [f"{i % 5},{'abc'[i % 3]},{i % 2}" for i in range(ROWS)]
    lines[1], lines[2], lines[3], lines[4] = "?,?,1", ",,0", "NA,NA,1", "n/a,unknown,0"
    folder = prepare_csv("\n".join(lines) + "\n", tmp_path, na_values=["?", "unknown"])
    rows = all_rows(folder)
    assert rows.column("n").null_count == 4 and rows.column("s").null_count == 4
    assert set(rows.column("s").to_pylist()) == {"a", "b", "c", None}
    assert splits.read_manifest(folder)["missing_values"][-2:] == ["?", "unknown"]


def test_parquet_text_tokens_nan_and_numeric_na_values_become_nulls(tmp_path: Path) -> None:
    data = table(
        s=cycle(["a", "", "NA", "-", None, "b", " NA"]),
        f=cycle([1.0, float("nan"), None, 2.0]),
        i=cycle([3, -999, 4]),
    )
    folder = prepare_parquet(data, tmp_path, na_values=["-", "-999"])
    rows = all_rows(folder)
    assert set(rows.column("s").to_pylist()) == {"a", "b", " NA", None}  # values are not stripped
    assert rows.column("f").null_count == 60 and not np.isnan(rows.column("f").to_numpy(zero_copy_only=False)).all()
    assert rows.column("i").null_count == 40 and set(rows.column("i").to_pylist()) == {3.0, 4.0, None}


def test_infinity_is_refused_naming_the_columns(tmp_path: Path) -> None:
    data = table(a=cycle([1.0, float("inf")]), b=cycle([2.0, 3.0, float("-inf")]), c=cycle([1.0, 2.0]))
    assert refused(data, tmp_path) == (
        "features hold infinite values (column: count) {'a': 60, 'b': 40}: replace them with numbers, "
        "or leave those cells empty to mark them missing"
    )


def test_rows_without_a_label_are_dropped_counted_and_warned_once(tmp_path: Path, caplog) -> None:
    data = pa.table({"x": list(range(ROWS)), "y": [None if i in (3, 50, 51) else i % 2 for i in range(ROWS)]})
    with caplog.at_level(logging.WARNING, logger="wd_pipeline"):
        folder = prepare_parquet(data, tmp_path)
    assert [record.getMessage() for record in caplog.records] == [
        "label column 'y' is missing on 3 of 120 rows: those rows are left out"
    ]
    manifest = splits.read_manifest(folder)
    assert manifest["dropped_label_rows"] == 3 and manifest["rows"] == ROWS
    assert sum(part["rows"] for part in manifest["splits"].values()) == ROWS - 3
    assert sorted(all_rows(folder).column("x").to_pylist()) == [i for i in range(ROWS) if i not in (3, 50, 51)]


def test_a_label_missing_on_more_than_half_the_rows_is_refused(tmp_path: Path) -> None:
    data = pa.table({"x": list(range(ROWS)), "y": [None if i % 5 else 1.0 for i in range(ROWS)]})
    assert refused(data, tmp_path) == (
        "label column 'y' is missing on 96 of 120 rows (more than half): fill it in, or pass --label with another column"
    )


def test_split_features_as_training_reads_them(tmp_path: Path) -> None:
    data = table(n=cycle([1.0, None, 3.0]), s=cycle(["a", None, "b"]))
    part = splits.load_split(prepare_parquet(data, tmp_path), "train")
    assert str(part.features["n"].dtype) == "float64" and part.features["n"].isna().any()
    assert part.features["s"].dtype == object
    assert {type(value) for value in part.features["s"]} == {str, type(None)}


def test_csv_and_parquet_of_one_table_give_the_same_splits(tmp_path: Path) -> None:
    data = table(n=cycle([1.5, None, 3.0, 4.0]), s=cycle(["a", None, "b"]), k=cycle([1, 2, 3, 4, 5]))
    parquet = prepare_parquet(data, tmp_path / "p")
    csv = tmp_path / "d.csv"
    data.to_pandas().to_csv(csv, index=False)
    from_csv = splits.prepare(config(tmp_path / "c", csv))
    for name in splits.SPLITS:
        a, b = splits.load_split(parquet, name), splits.load_split(from_csv, name)
        pd.testing.assert_frame_equal(a.features, b.features)
        np.testing.assert_array_equal(a.label, b.label)
    assert splits.read_profile(parquet) == splits.read_profile(from_csv)


# --- columns the model cannot learn from ---------------------------------------------------------------------------


def test_an_all_missing_column_is_refused(tmp_path: Path) -> None:
    data = table(x=cycle([1.0, 2.0]), empty=pa.nulls(ROWS, pa.float64()), blank=[None] * ROWS)
    assert refused(data, tmp_path) == (
        "columns ['empty', 'blank'] are empty (every value missing): leave them out with --exclude empty,blank"
    )
    one = refused(table(x=cycle([1.0, 2.0]), gaps=cycle(["NA", ""])), tmp_path)
    assert one == "column 'gaps' is empty (every value missing): leave it out with --exclude gaps"


def test_a_constant_column_is_dropped_with_one_warning(tmp_path: Path, caplog) -> None:
    data = table(x=cycle([1.0, 2.0]), same=[7] * ROWS, tag=["a"] * ROWS, mostly=cycle(["a", None]))
    with caplog.at_level(logging.WARNING, logger="wd_pipeline"):
        checked = check(data, tmp_path)
    assert [record.getMessage() for record in caplog.records] == [
        "dropped constant columns ['same', 'tag']: one value on every row, nothing to learn from"
    ]
    assert checked.schema.names() == ["x", "mostly"]  # one value plus gaps: the gaps may tell something
    assert checked.dropped_columns == (DroppedColumn("same", "constant"), DroppedColumn("tag", "constant"))


def test_only_constant_columns_is_refused(tmp_path: Path) -> None:
    message = refused(table(same=[7] * ROWS), tmp_path)
    assert message == "data has no feature columns besides the label that vary: every one is constant"


def test_an_identifier_column_is_refused_unless_named_categorical(tmp_path: Path) -> None:
    data = table(x=cycle([1.0, 2.0]), name=[f"user-{i}" for i in range(ROWS)])
    assert refused(data, tmp_path) == (
        "column 'name' looks like an identifier (120 distinct values in 120 rows): "
        "leave it out with --exclude name, or pass --categorical name if it is a category"
    )
    assert check(data, tmp_path, categorical=["name"]).schema.categorical() == ["name"]


def test_numbers_mixed_with_text_name_the_column_a_value_and_its_row(tmp_path: Path) -> None:
    values = [str(i % 37) for i in range(ROWS)]
    values[6], values[9], values[30] = "?", "?", "about 3"
    data = table(age=values, x=cycle([1.0, 2.0]))
    assert refused(data, tmp_path) == (
        "column 'age' mixes numbers and text: 117 of its 120 values are numbers, but row 7 holds '?'. "
        "Declare such values missing with --na-values '?', or take the column as categorical with --categorical age"
    )
    assert check(data, tmp_path, categorical=["age"]).schema.categorical() == ["age"]


def test_the_row_of_a_mixed_value_counts_rows_without_a_label(tmp_path: Path) -> None:
    lines = ["age,y"] + [f"{i % 37},{i % 2}" for i in range(ROWS)]
    lines[2] = "5,"  # row 2 has no label: left out, but the rows after it keep their numbers
    lines[11] = "unknown,1"
    with pytest.raises(DataError) as caught:
        prepare_csv("\n".join(lines) + "\n", tmp_path)
    assert "but row 11 holds 'unknown'. Declare such values missing with --na-values unknown," in str(caught.value)


def test_text_of_only_numbers_stays_categorical(tmp_path: Path) -> None:
    checked = check(table(code=cycle(["01", "02", "10"]), x=cycle([1.0, 2.0])), tmp_path)
    assert checked.schema.column("code").role is Role.CATEGORICAL
    assert set(checked.features.column("code").to_pylist()) == {"01", "02", "10"}


def test_too_many_categories_are_refused_with_the_cap(tmp_path: Path) -> None:
    data = table(city=cycle([f"c{i}" for i in range(30)]), x=cycle([1.0, 2.0]))
    assert refused(data, tmp_path, max_categories=25) == (
        "categorical columns have more distinct values than --max-categories 25 (column: count) {'city': 30}: "
        "raise --max-categories, or leave it out with --exclude city"
    )
    assert check(data, tmp_path, max_categories=30).schema.categorical() == ["city"]


def test_the_manifest_holds_schema_profile_and_files(tmp_path: Path) -> None:
    folder = prepare_parquet(table(n=cycle([1.0, None]), s=cycle(["a", "b", None])), tmp_path)
    manifest = splits.read_manifest(folder)
    assert TableSchema.from_dict(manifest["schema"]) == splits.read_schema(folder)
    assert [file["path"] for file in manifest["files"]] == [str(tmp_path / "d.parquet")]
    assert manifest["files"][0]["sha256"] == manifest["sha256"]
    profile = splits.read_profile(folder)
    assert [split.split for split in profile.splits] == list(splits.SPLITS)
    assert [split.rows for split in profile.splits] == [manifest["splits"][name]["rows"] for name in splits.SPLITS]


def test_a_mixed_value_in_a_folder_is_found_by_file_and_row(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "a.csv").write_text("n,y\n" + "".join(f"{i},{i % 2}\n" for i in range(60)))
    (folder / "b.csv").write_text("n,y\n" + "".join(f"{'-' if i == 2 else i},{i % 2}\n" for i in range(60)))
    with pytest.raises(DataError) as caught:
        splits.prepare(config(tmp_path, folder))
    assert "119 of its 120 values are numbers, but row 3 of b.csv holds '-'." in str(caught.value)
    assert splits.read_manifest(splits.prepare(config(tmp_path, folder, na_values=["-"])))["rows"] == 120


def test_a_parquet_dictionary_with_a_missing_token_becomes_null(tmp_path: Path) -> None:
    data = table(s=pa.array(cycle(["a", "NA", "b"])).dictionary_encode(), x=cycle([1.0, 2.0]))
    checked = check(data, tmp_path)
    assert checked.features.column("s").null_count == 40
    assert validation.conform(data, checked.schema).column("s").type == pa.string()


def test_a_text_label_holding_a_missing_token_is_missing_in_parquet_too(tmp_path: Path) -> None:
    words = ["no", "yes"] * 59 + ["NA", "?"]
    data = pa.table({"x": list(range(ROWS)), "y": words})
    checked = check(data, tmp_path, positive_class="yes", na_values=["?"])
    assert checked.dropped_label_rows == 2 and len(checked.label) == ROWS - 2
