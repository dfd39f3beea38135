"""A data file read a batch of rows at a time, for work whose memory must not grow with the file (scoring).

A single Parquet file is read through ``ParquetFile.iter_batches`` and a single CSV through
Arrow's streaming reader (column types inferred from its first block, as ``read_csv`` infers
them), and its sha256 is computed over a stream of its bytes. A folder is parsed whole, as
ingest parses it (hive partition keys need every file's table), and handed out in the same
batches. Errors read as :func:`~wd_pipeline.data.sources.parse_table` words them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from wd_pipeline.data import sources
from wd_pipeline.data.sources import PARQUET_MAGIC, Source
from wd_pipeline.errors import DataError, first_line

HASH_BLOCK = 16 << 20  # bytes read at a time for the sha256


@dataclass(frozen=True)
class SourceBatches:
    """The source's schema, its sha256, and its rows as tables of at most ``rows`` rows each (read on demand)."""

    schema: pa.Schema
    sha256: str
    batches: Iterator[pa.Table]


def open_batches(source: Source, na_values: Sequence[str] | None, rows: int) -> SourceBatches:
    """Open ``source`` for reading ``rows`` rows at a time; a file that is not Parquet or CSV fails here."""
    if source.is_folder:
        read = sources.read_source(source)
        table = sources.parse_source(read, na_values).table
        return SourceBatches(table.schema, read.fingerprint().sha256, _slices(table, rows))
    head, tail, size = _ends(source)
    if not size:
        raise DataError(f"data file {source.uri} is empty. Pass a CSV with a header row or a Parquet file")
    if source.is_parquet_by_name or head == PARQUET_MAGIC:
        if not (head == PARQUET_MAGIC and tail == PARQUET_MAGIC):
            raise DataError(
                f"data file {source.uri} is not a valid Parquet file (truncated or another format): "
                "write it again completely, or pass a CSV"
            )
        return SourceBatches(*_parquet(source, rows))
    return SourceBatches(*_csv(source, na_values, rows))


def stream_sha256(source: Source) -> str:
    """sha256 of a file's bytes, read a block at a time: the same value as hashing the whole file at once."""
    digest = hashlib.sha256()
    try:
        with source.filesystem.open_input_stream(source.path) as stream:
            while block := stream.read(HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read data file {source.uri}: {exc}") from None
    return digest.hexdigest()


def _ends(source: Source) -> tuple[bytes, bytes, int]:
    """The file's first and last four bytes (the Parquet magic) and its size."""
    try:
        with source.filesystem.open_input_file(source.path) as file:
            size = file.size()
            head = file.read(4)
            file.seek(max(size - 4, 0))
            return head, file.read(4), size
    except OSError as exc:
        raise DataError(f"cannot read data file {source.uri}: {exc}") from None


def _parquet(source: Source, rows: int) -> tuple[pa.Schema, str, Iterator[pa.Table]]:
    try:
        parquet = pq.ParquetFile(source.filesystem.open_input_file(source.path))
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"data file {source.uri} is not a readable Parquet file: {exc}") from None

    def tables() -> Iterator[pa.Table]:
        try:
            for batch in parquet.iter_batches(batch_size=rows):
                yield pa.Table.from_batches([batch], schema=schema)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"data file {source.uri} is not a readable Parquet file: {exc}") from None
        finally:
            parquet.close()

    return schema, stream_sha256(source), tables()


def _csv(source: Source, na_values: Sequence[str] | None, rows: int) -> tuple[pa.Schema, str, Iterator[pa.Table]]:
    def unreadable(exc: BaseException) -> DataError:
        return DataError(
            f"data file {source.uri} is neither Parquet nor readable CSV: {first_line(exc)}. "
            "Pass a comma-separated file with a header row, or a Parquet file"
        )

    try:
        reader = pacsv.open_csv(
            source.filesystem.open_input_stream(source.path), convert_options=sources.csv_options(na_values)
        )
    except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        raise unreadable(exc) from None
    sources.refuse_other_delimiters(reader.schema, source)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise unreadable(exc) from None
        finally:
            reader.close()

    return reader.schema, stream_sha256(source), _gathered(batches(), reader.schema, rows)


def _gathered(batches: Iterator[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """Record batches of any size regrouped into tables of ``rows`` rows (the last one shorter)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held, schema=schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held, schema=schema)


def _slices(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, rows):
        yield table.slice(start, rows)
