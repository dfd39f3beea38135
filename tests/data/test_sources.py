"""Sources as users keep them: one file, a folder of files, a hive-partitioned dataset; read once, fingerprinted whole."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from wd_pipeline.data import sources
from wd_pipeline.errors import DataError


def read(data: str | Path, na_values: list[str] | None = None) -> tuple[sources.Fingerprint, sources.SourceTable]:
    raw = sources.read_source(sources.locate(str(data)))
    return raw.fingerprint(), sources.parse_source(raw, na_values)


def part(start: int, rows: int = 4) -> pa.Table:
    return pa.table({"a": list(range(start, start + rows)), "s": [f"v{i % 2}" for i in range(rows)]})


def test_default_missing_tokens_are_pyarrows() -> None:
    assert list(sources.DEFAULT_MISSING) == pacsv.ConvertOptions().null_values
    assert sources.missing_tokens(["?", "NA"])[-1] == "?"  # added once, after the defaults


def test_single_file_keeps_its_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,s\n1,x\n2,y\n")
    raw, parsed = read(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert raw.sha256 == digest
    assert raw.files == (sources.SourceFile(str(path), path.stat().st_size, digest),)
    assert parsed.table.num_rows == 2 and parsed.where(1) == "row 2"


def test_missing_tokens_in_csv_string_and_number_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('n,s\n1,x\n,\n?,?\nNA,NA\nnan,n/a\n4,""\n')
    table = read(path)[1].table
    assert table.schema.field("s").type == pa.string()
    assert table.column("s").to_pylist() == ["x", None, "?", None, None, None]
    assert table.column("n").type == pa.string()  # "?" is text until declared missing
    table = read(path, na_values=["?"])[1].table
    assert table.column("n").type == pa.int64()
    assert table.column("n").to_pylist() == [1, None, None, None, None, 4]
    assert table.column("s").to_pylist() == ["x", None, None, None, None, None]


def test_folder_of_parquet_files_is_one_table_in_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    (folder / "2024").mkdir(parents=True)
    pq.write_table(part(0), folder / "2024" / "b.parquet")
    pq.write_table(part(10), folder / "a.parquet")
    pq.write_table(part(20), folder / "_SUCCESS.parquet")  # skipped, like pyarrow.dataset does
    (folder / ".hidden").mkdir()
    pq.write_table(part(30), folder / ".hidden" / "c.parquet")
    raw, parsed = read(folder)
    assert [file.path for file in raw.files] == ["2024/b.parquet", "a.parquet"]
    assert parsed.table.column("a").to_pylist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert parsed.file_rows == (4, 4)
    assert parsed.where(5) == "row 2 of a.parquet"
    for file in raw.files:
        content = (folder / file.path).read_bytes()
        assert (file.size, file.sha256) == (len(content), hashlib.sha256(content).hexdigest())


def test_folder_fingerprint_covers_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(part(0), folder / "a.parquet")
    pq.write_table(part(10), folder / "b.parquet")
    first = read(folder)[0].sha256
    assert read(folder)[0].sha256 == first
    pq.write_table(part(20), folder / "c.parquet")
    added = read(folder)[0].sha256
    (folder / "c.parquet").rename(folder / "d.parquet")
    renamed = read(folder)[0].sha256
    pq.write_table(part(11), folder / "b.parquet")
    changed = read(folder)[0].sha256
    assert len({first, added, renamed, changed}) == 4


def test_hive_partitions_become_columns(tmp_path: Path) -> None:
    folder = tmp_path / "hive"
    table = pa.table({"a": [1, 2, 3, 4], "year": [2023, 2023, 2024, 2024], "region": ["n", "s", "n", "s"]})
    ds.write_dataset(table, folder, format="parquet", partitioning=["year", "region"], partitioning_flavor="hive")
    raw, parsed = read(folder)
    assert len(raw.files) == 4
    got = parsed.table
    assert got.schema.field("year").type == pa.int32() and got.schema.field("region").type == pa.string()
    rows = sorted(zip(*(got.column(name).to_pylist() for name in ("a", "year", "region")), strict=True))
    assert rows == [(1, 2023, "n"), (2, 2023, "s"), (3, 2024, "n"), (4, 2024, "s")]


def test_folder_of_csv_files_unifies_types(tmp_path: Path) -> None:
    folder = tmp_path / "csvs"
    folder.mkdir()
    (folder / "1.csv").write_text("a,b,c\n1,2,x\n3,4,y\n")
    (folder / "2.csv").write_text("a,b,c,d\n1.5,,z,7\n2.5,?,w,8\n")
    table = read(folder)[1].table
    assert table.schema.field("a").type == pa.float64()
    assert table.schema.field("b").type == pa.string()  # numbers here, "?" there: validation names it
    assert table.column("b").to_pylist() == ["2", "4", None, "?"]
    assert table.column("d").to_pylist() == [None, None, 7, 8]  # a column some files lack is missing there
    assert read(folder, na_values=["?"])[1].table.schema.field("b").type == pa.int64()


def test_folder_with_clashing_types_names_the_column_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "clash"
    folder.mkdir()
    pq.write_table(pa.table({"t": pa.array([1, 2])}), folder / "a.parquet")
    pq.write_table(pa.table({"t": pa.array([[1], [2]])}), folder / "b.parquet")
    with pytest.raises(DataError) as caught:
        read(folder)
    assert str(caught.value) == (
        f"data folder {folder}: column 't' is int64 in a.parquet but list<element: int64> in b.parquet: "
        "write every file with the same type for a column"
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "holds no Parquet or CSV files (*.parquet, *.pq, *.csv): pass --data with a folder of them, or with one file"),
        ({"a.parquet": b"PAR1", "b.csv": b"a\n1\n"}, "mixes Parquet and CSV files (a.parquet, b.csv): keep one format per folder"),
    ],
)  # fmt: skip
def test_folder_without_one_data_format_is_refused(files: dict[str, bytes], message: str, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    with pytest.raises(DataError) as caught:
        read(folder)
    assert str(caught.value) == f"data folder {folder} {message}"


def test_broken_file_in_a_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(part(0), folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=f"data file {folder}/b.parquet is not a valid Parquet file"):
        read(folder)


def test_other_files_in_a_folder_are_skipped_with_one_warning(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(part(0), folder / "a.parquet")
    (folder / "README.txt").write_text("about")
    (folder / "notes.md").write_text("notes")
    with caplog.at_level(logging.WARNING, logger="wd_pipeline.data.sources"):
        raw = read(folder)[0]
    assert [file.path for file in raw.files] == ["a.parquet"]
    assert [record.getMessage() for record in caplog.records] == [
        f"data folder {folder}: skipped 2 files that are neither Parquet nor CSV, e.g. README.txt"
    ]


def test_a_link_inside_an_allowed_folder_cannot_reach_outside(tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(part(0), outside / "secret.parquet")
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    pq.write_table(part(0), allowed / "data" / "a.parquet")
    (allowed / "data" / "b.parquet").symlink_to(outside / "secret.parquet")
    monkeypatch.setenv(sources.DATA_ROOTS_ENV, str(allowed))
    monkeypatch.chdir(allowed)
    with pytest.raises(DataError, match=f"resolves to {outside / 'secret.parquet'}, outside the allowed data folders"):
        read(allowed / "data")


def test_folder_as_a_file_uri(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(part(0), folder / "a.parquet")
    raw, parsed = read(folder.as_uri())
    assert parsed.table.num_rows == 4 and parsed.paths == ("a.parquet",)
    assert raw.sha256 == read(folder)[0].sha256


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file_in_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(part(0), folder / "a.parquet")
    (folder / "a.parquet").chmod(0)
    with pytest.raises(DataError, match="cannot read data file"):
        read(folder)
