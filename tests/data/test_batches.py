"""A data file read a batch at a time: the same rows, types and sha256 as reading it whole, in batches of the size
asked for, and drift counted batch by batch equal to drift over the whole table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.data.test_drift import reference_of, sample
from wd_pipeline.data import drift, sources
from wd_pipeline.data.batches import open_batches
from wd_pipeline.errors import DataError


def table(rows: int = 1000) -> pa.Table:
    rng = np.random.default_rng(3)
    words = rng.choice(["a", "b", "NA", "c"], rows).astype(object)
    return pa.table({"x": rng.normal(size=rows), "k": pa.array(words, pa.string()), "y": rng.integers(0, 2, rows)})


def whole(path: Path) -> pa.Table:
    return sources.parse_source(sources.read_source(sources.locate(str(path)))).table


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_batches_hold_the_rows_of_the_whole_file_in_batches_of_the_size_asked(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"rows.{kind}"
    if kind == "parquet":
        pq.write_table(table(), path, row_group_size=300)
    else:
        pacsv.write_csv(table(), path)
    opened = open_batches(sources.locate(str(path)), None, rows=128)
    batches = list(opened.batches)
    assert [batch.num_rows for batch in batches] == [128] * 7 + [1000 - 7 * 128]
    expected = whole(path)
    assert opened.schema == expected.schema
    assert pa.concat_tables(batches).equals(expected)  # "NA" is a gap in the CSV, as in a whole read
    assert opened.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_blocks_are_regrouped_into_batches_of_the_size_asked(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    pacsv.write_csv(table(5000), path)
    opened = open_batches(sources.locate(str(path)), None, rows=4096)
    sizes = [batch.num_rows for batch in opened.batches]
    assert sizes == [4096, 904]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty. Pass a CSV with a header row or a Parquet file"),
        (b"PAR1 not really parquet", "is not a valid Parquet file (truncated or another format)"),
    ],
)
def test_a_file_that_cannot_be_read_fails_before_any_batch(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_batches(sources.locate(str(path)), None, rows=10)


def test_drift_counted_batch_by_batch_equals_drift_over_the_whole_table() -> None:
    reference = reference_of(sample(seed=0), positive_rate=0.3)
    current = sample(rows=3001, seed=5)
    labels = (np.arange(current.num_rows) % 4 == 0).astype(np.int8)
    counts = drift.DriftCounts(reference, current.schema)
    for start in range(0, current.num_rows, 500):
        counts.add(current.slice(start, 500), labels[start : start + 500])
    assert counts.report(warn=0.1, alert=0.25, reference_name="m v1", label="y") == drift.compare(
        reference, current, warn=0.1, alert=0.25, reference_name="m v1", label="y", current_label=labels
    )
