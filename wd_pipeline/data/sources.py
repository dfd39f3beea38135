"""Where a data source is and what it holds: locate it, confine it, read and parse it once.

A source is one CSV or Parquet file, or a folder of them (plain or hive-partitioned,
``year=2024/part-0.parquet``). Sources are opened through ``pyarrow.fs`` so a local path
and a URI (``file://``, ``s3://``, ``gs://`` …) take the same code path. Every file's
bytes are read once: the same buffers give the sha256 fingerprint that keys every later
result and the table itself, so the fingerprint covers exactly what was parsed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from wd_pipeline.config import PROJECT_ROOT
from wd_pipeline.errors import DataError, first_line

log = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
# What pyarrow.dataset skips by default too: Spark's _SUCCESS, .crc checksums, hidden files.
IGNORED_PREFIXES = (".", "_")
# pyarrow's own default null tokens (``pacsv.ConvertOptions().null_values``), written out so
# that the documented list cannot drift with a pyarrow upgrade.
DEFAULT_MISSING = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)


@dataclass(frozen=True)
class Source:
    """A readable location: the filesystem that holds it, the path within it, and whether it is a folder."""

    filesystem: pafs.FileSystem
    path: str
    uri: str
    is_folder: bool = False

    @property
    def is_parquet_by_name(self) -> bool:
        return self.path.lower().endswith(PARQUET_SUFFIXES)

    def child(self, relative: str) -> Source:
        """The file at ``relative`` inside this folder."""
        return Source(self.filesystem, f"{self.path.rstrip('/')}/{relative}", f"{self.uri.rstrip('/')}/{relative}")


@dataclass(frozen=True)
class SourceFile:
    """One file read: its path (relative to the folder; the URI for a single file), size and sha256."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SourceFile:
        return cls(path=str(raw["path"]), size=int(raw["size"]), sha256=str(raw["sha256"]))


@dataclass(frozen=True)
class Fingerprint:
    """The identity of what was read: each file's sha256, and one sha256 for the whole source."""

    files: tuple[SourceFile, ...]
    sha256: str


@dataclass(frozen=True)
class SourceBytes:
    """Every file of a source, read into memory: paths relative to the folder (the URI for a single file)."""

    source: Source
    paths: tuple[str, ...]
    contents: tuple[pa.Buffer, ...]

    def fingerprint(self) -> Fingerprint:
        """sha256 of every file (in threads: hashlib releases the GIL) and of the source.

        A single file's fingerprint is its sha256; a folder's covers each file's relative
        path and sha256 (:func:`folder_fingerprint`).
        """
        with ThreadPoolExecutor(max_workers=2) as pool:
            digests = list(pool.map(fingerprint, self.contents))
        files = tuple(
            SourceFile(path, len(raw), digest)
            for path, raw, digest in zip(self.paths, self.contents, digests, strict=True)
        )
        return Fingerprint(files, folder_fingerprint(files) if self.source.is_folder else digests[0])


@dataclass(frozen=True)
class SourceTable:
    """A parsed source: one table, the files it came from and how many rows each gave, in order.

    ``declared`` is the source's own schema: the table's, except where text was read
    dictionary-encoded for speed (:func:`parse_table`), where it keeps the file's text type.
    """

    table: pa.Table
    paths: tuple[str, ...]
    file_rows: tuple[int, ...]
    declared: pa.Schema

    def where(self, row: int) -> str:
        """Where row ``row`` (0-based, of the whole table) is, as a user finds it: ``row 7`` or ``row 7 of part-1.csv``.

        Rows are counted from 1, the header not counted.
        """
        if len(self.paths) == 1:
            return f"row {row + 1}"
        start = 0
        for path, rows in zip(self.paths, self.file_rows, strict=True):
            if row < start + rows:
                return f"row {row - start + 1} of {path}"
            start += rows
        return f"row {row + 1}"


def missing_tokens(na_values: Sequence[str] | None = None) -> tuple[str, ...]:
    """The cell values that mean missing: pyarrow's defaults (the empty cell among them) plus ``na_values``."""
    return tuple(dict.fromkeys((*DEFAULT_MISSING, *(na_values or ()))))


DATA_ROOTS_ENV = "WD_PIPELINE_DATA_ROOTS"
DATA_SCHEMES_ENV = "WD_PIPELINE_DATA_SCHEMES"
DEFAULT_SCHEMES = ("file", "s3", "gs", "hdfs")


def data_roots() -> list[Path]:
    """Local folders a data source may live in, symlinks and ``..`` already resolved.

    The project's ``data/`` folder, the working directory, and every folder listed in
    ``WD_PIPELINE_DATA_ROOTS`` (separated by ``os.pathsep``). The confinement exists because
    the path is a flow parameter: anyone who can trigger a deployment could otherwise make
    the worker read, fingerprint and upload any file it can see (``/etc/shadow``, keys) as
    an MLflow dataset. The working directory is skipped when it is the filesystem root,
    which would allow everything.
    """
    roots = [PROJECT_ROOT / "data"]
    cwd = Path.cwd().resolve()
    if cwd != Path(cwd.anchor):
        roots.append(cwd)
    extra = os.environ.get(DATA_ROOTS_ENV, "")
    roots += [Path(item).expanduser() for item in extra.split(os.pathsep) if item.strip()]
    return list(dict.fromkeys(root.resolve() for root in roots))


def data_schemes() -> tuple[str, ...]:
    """URI schemes a data source may use: ``WD_PIPELINE_DATA_SCHEMES`` (comma-separated) replaces the default.

    Replacing rather than extending lets an operator narrow the set (e.g. ``file`` only);
    ``http`` and the like are refused by default because a worker fetching arbitrary URLs
    can be turned against services only it can reach.
    """
    text = os.environ.get(DATA_SCHEMES_ENV, "")
    chosen = [item.strip().lower() for item in text.split(",") if item.strip()]
    return tuple(chosen) or DEFAULT_SCHEMES


def check_allowed_path(path: Path, shown: str) -> Path:
    """The resolved ``path`` if it lies under an allowed root, else a DataError saying how to allow it."""
    resolved = path.resolve()
    roots = data_roots()
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    raise DataError(
        f"data source {shown} resolves to {resolved}, outside the allowed data folders "
        f"{[str(root) for root in roots]}. Move the file under one of them, or allow its folder with "
        f"{DATA_ROOTS_ENV}=/path/to/folder (several separated by {os.pathsep!r})"
    )


def locate(data: str) -> Source:
    """Resolve ``data`` to a file or folder that exists, or say what to pass instead.

    A relative path that is not under the working directory is also looked up under the
    project root, so the bundled default works wherever the command runs. Confinement
    (:func:`data_roots`, :func:`data_schemes`) is checked before existence, so a refused
    path does not reveal whether a file is there.
    """
    if "://" in data:
        scheme = data.split("://", 1)[0].lower()
        allowed = data_schemes()
        if scheme not in allowed:
            raise DataError(
                f"data URI scheme {scheme!r} of {data!r} is not allowed; allowed schemes are {list(allowed)}. "
                f"Copy the file to an allowed location, or set {DATA_SCHEMES_ENV}={','.join((*allowed, scheme))}"
            )
        try:
            filesystem, path = pafs.FileSystem.from_uri(data)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(f"cannot open data URI {data!r}: {exc}") from None
        if isinstance(filesystem, pafs.LocalFileSystem):
            path = str(check_allowed_path(Path(path), data))
        uri = data
    else:
        candidate = Path(data).expanduser()
        if not candidate.is_absolute() and not candidate.exists() and (PROJECT_ROOT / candidate).exists():
            candidate = PROJECT_ROOT / candidate
        resolved = str(check_allowed_path(candidate, data))
        filesystem, path, uri = pafs.LocalFileSystem(), resolved, resolved
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(
            f"data file not found: {data}. Pass --data with the path of a CSV or Parquet file, or of a folder of them"
        )
    if info.type not in (pafs.FileType.File, pafs.FileType.Directory):
        raise DataError(f"data source {data} is not a file. Pass --data with the path of a CSV or Parquet file")
    return Source(filesystem, path, uri, is_folder=info.type == pafs.FileType.Directory)


def read_bytes(source: Source) -> pa.Buffer:
    """All bytes of one file; empty files are refused here, before any parsing.

    Read as one Arrow buffer from a random-access file: a stream copies in small pieces,
    far slower for a large file (benchmarks/RESULTS.md). Not memory-mapped, so a file
    rewritten during ingest cannot change (or truncate) what is being parsed.
    """
    try:
        with source.filesystem.open_input_file(source.path) as file:
            raw = file.read_buffer()
    except OSError as exc:
        raise DataError(f"cannot read data file {source.uri}: {exc}") from None
    if not raw:
        raise DataError(f"data file {source.uri} is empty. Pass a CSV with a header row or a Parquet file")
    return raw


def fingerprint(raw: bytes | pa.Buffer) -> str:
    """sha256 of the source bytes: the identity of the data everywhere downstream."""
    return hashlib.sha256(raw).hexdigest()


def folder_fingerprint(files: Sequence[SourceFile]) -> str:
    """sha256 over every file's relative path and sha256: renaming, adding or changing a file changes it."""
    listing = "".join(f"{file.path}\t{file.sha256}\n" for file in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def read_source(source: Source) -> SourceBytes:
    """Every byte of a file, or of a folder's data files (read by several threads), read once."""
    if not source.is_folder:
        return SourceBytes(source, (source.uri,), (read_bytes(source),))
    relative = list_data_files(source)
    with ThreadPoolExecutor(max_workers=4) as pool:
        contents = tuple(pool.map(lambda name: read_bytes(source.child(name)), relative))
    return SourceBytes(source, tuple(relative), contents)


def list_data_files(source: Source) -> list[str]:
    """The folder's Parquet or CSV files (one format per folder), as sorted paths relative to it.

    Files and folders whose name starts with ``.`` or ``_`` are skipped, as pyarrow.dataset
    does; files of other types are skipped with a warning. Each local file is confined
    like the folder, so a symbolic link inside the folder cannot reach outside the roots.
    """
    try:
        infos = source.filesystem.get_file_info(pafs.FileSelector(source.path, recursive=True))
    except OSError as exc:
        raise DataError(f"cannot list data folder {source.uri}: {exc}") from None
    base = source.path.rstrip("/") + "/"
    parquet: list[str] = []
    csv: list[str] = []
    other: list[str] = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(base):
            continue
        relative = info.path[len(base) :]
        if any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")):
            continue
        if isinstance(source.filesystem, pafs.LocalFileSystem):
            check_allowed_path(Path(info.path), f"{source.uri.rstrip('/')}/{relative}")
        lower = relative.lower()
        (parquet if lower.endswith(PARQUET_SUFFIXES) else csv if lower.endswith(CSV_SUFFIXES) else other).append(
            relative
        )
    parquet, csv = sorted(parquet), sorted(csv)
    if parquet and csv:
        raise DataError(
            f"data folder {source.uri} mixes Parquet and CSV files ({parquet[0]}, {csv[0]}): keep one format per folder"
        )
    if not (parquet or csv):
        raise DataError(
            f"data folder {source.uri} holds no Parquet or CSV files (*.parquet, *.pq, *.csv): "
            "pass --data with a folder of them, or with one file"
        )
    if other:
        log.warning(
            "data folder %s: skipped %d files that are neither Parquet nor CSV, e.g. %s",
            source.uri,
            len(other),
            sorted(other)[0],
        )
    return parquet or csv


def csv_options(na_values: Sequence[str] | None = None) -> pacsv.ConvertOptions:
    """How a CSV is converted: the missing tokens become nulls, in string columns too."""
    return pacsv.ConvertOptions(null_values=list(missing_tokens(na_values)), strings_can_be_null=True)


def parse_table(
    raw: bytes | pa.Buffer, source: Source, na_values: Sequence[str] | None = None, *, text_as_dictionary: bool = False
) -> pa.Table:
    """Parse Parquet (by magic bytes) or CSV into an Arrow table.

    In a CSV the missing tokens (:func:`missing_tokens`) are read as nulls; in Parquet they
    are left as written (validation turns them into nulls in string columns). With
    ``text_as_dictionary``, Parquet text columns are read dictionary-encoded, as Parquet
    usually stores them, which saves building every string only to encode it again.
    """
    view = memoryview(raw)
    looks_parquet = view[:4] == PARQUET_MAGIC
    if source.is_parquet_by_name or looks_parquet:
        if not (looks_parquet and view[-4:] == PARQUET_MAGIC):
            raise DataError(
                f"data file {source.uri} is not a valid Parquet file (truncated or another format): "
                "write it again completely, or pass a CSV"
            )
        try:
            text = _text_columns(pq.read_schema(pa.BufferReader(raw))) if text_as_dictionary else None
            return pq.read_table(pa.BufferReader(raw), read_dictionary=text or None)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"data file {source.uri} is not a readable Parquet file: {exc}") from None
    try:
        table = pacsv.read_csv(pa.BufferReader(raw), convert_options=csv_options(na_values))
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise DataError(
            f"data file {source.uri} is neither Parquet nor readable CSV: {first_line(exc)}. "
            "Pass a comma-separated file with a header row, or a Parquet file"
        ) from None
    refuse_other_delimiters(table.schema, source)
    return table


def _text_columns(schema: pa.Schema) -> list[str]:
    return [field.name for field in schema if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)]


def parse_source(
    data: SourceBytes, na_values: Sequence[str] | None = None, *, text_as_dictionary: bool = False
) -> SourceTable:
    """One table from a file or from all files of a folder, hive partition keys as columns.

    ``text_as_dictionary`` applies to a single Parquet file (see :func:`parse_table`); the
    table's ``declared`` schema still gives the text columns' own type.
    """
    if not data.source.is_folder:
        table = parse_table(data.contents[0], data.source, na_values, text_as_dictionary=text_as_dictionary)
        declared = table.schema
        if text_as_dictionary and any(pa.types.is_dictionary(field.type) for field in declared):
            declared = pq.read_schema(pa.BufferReader(data.contents[0]))
        return SourceTable(table, data.paths, (table.num_rows,), declared)

    def parse(index: int) -> pa.Table:
        return parse_table(data.contents[index], data.source.child(data.paths[index]), na_values)

    with ThreadPoolExecutor(max_workers=2) as pool:
        tables = list(pool.map(parse, range(len(data.paths))))
    tables = _with_partition_keys(data, tables)
    table = _concat(tables, data)
    return SourceTable(table, data.paths, tuple(part.num_rows for part in tables), table.schema)


def _with_partition_keys(data: SourceBytes, tables: list[pa.Table]) -> list[pa.Table]:
    """Each file's table plus its hive partition keys (``year=2024/…``) as columns, typed by pyarrow.dataset.

    The partitioning is discovered from the paths alone, over the bytes already in memory,
    so nothing is read twice.
    """
    if not any("=" in part for path in data.paths for part in path.split("/")[:-1]):
        return tables
    import pyarrow.dataset as ds

    base = data.source.path.rstrip("/")
    memory = pafs.PyFileSystem(
        _MemoryFiles({f"{base}/{path}": raw for path, raw in zip(data.paths, data.contents, strict=True)})
    )
    file_format = (
        "parquet"
        if data.paths[0].lower().endswith(PARQUET_SUFFIXES)
        else ds.CsvFileFormat(convert_options=csv_options())
    )
    try:
        dataset = ds.dataset(
            [f"{base}/{path}" for path in data.paths],
            filesystem=memory,
            format=file_format,
            partitioning=ds.partitioning(flavor="hive"),
            partition_base_dir=base,
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"data folder {data.source.uri}: cannot read its partition folders: {first_line(exc)}"
        ) from None
    keys_schema = dataset.partitioning.schema
    keys_by_path = {
        fragment.path: ds.get_partition_keys(fragment.partition_expression) for fragment in dataset.get_fragments()
    }
    out = []
    for path, table in zip(data.paths, tables, strict=True):
        clash = [name for name in keys_schema.names if name in table.column_names]
        if clash:
            raise DataError(
                f"data folder {data.source.uri}: {clash[0]!r} is both a partition folder name and a column of "
                f"{path}: rename one of them"
            )
        keys = keys_by_path[f"{base}/{path}"]
        for field in keys_schema:
            value = keys.get(field.name)
            column = (
                pa.nulls(table.num_rows, field.type)
                if value is None
                else pa.repeat(pa.scalar(value, field.type), table.num_rows)
            )
            table = table.append_column(field, column)
        out.append(table)
    return out


def _concat(tables: list[pa.Table], data: SourceBytes) -> pa.Table:
    """The files' tables one after the other, columns matched by name.

    A column missing from a file is missing (null) on that file's rows. Types that differ
    between files are unified by pyarrow where it can (int with float, null with anything);
    numbers against text become text, so validation can name the column and an offending
    value; anything else is refused, naming the column and two files.
    """
    names = list(dict.fromkeys(name for table in tables for name in table.column_names))
    fields = []
    for name in names:
        kinds = {
            path: table.schema.field(name).type
            for path, table in zip(data.paths, tables, strict=True)
            if name in table.column_names
        }
        fields.append(pa.field(name, _unify_type(name, kinds, data.source.uri)))
    schema = pa.schema(fields)
    aligned = []
    for table in tables:
        columns = [
            table.column(field.name).cast(field.type)
            if field.name in table.column_names
            else pa.nulls(table.num_rows, field.type)
            for field in schema
        ]
        aligned.append(pa.table(columns, schema=schema))
    return pa.concat_tables(aligned)


def _unify_type(name: str, kinds: dict[str, pa.DataType], folder: str) -> pa.DataType:
    distinct = list(dict.fromkeys(kinds.values()))
    if len(distinct) == 1:
        return distinct[0]
    try:
        schemas = [pa.schema([pa.field(name, kind)]) for kind in distinct]
        return pa.unify_schemas(schemas, promote_options="permissive").field(name).type
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if all(_is_scalar(kind) for kind in distinct):
        return pa.string()
    first, second = [next(path for path, kind in kinds.items() if kind == wanted) for wanted in distinct[:2]]
    raise DataError(
        f"data folder {folder}: column {name!r} is {kinds[first]} in {first} but {kinds[second]} in {second}: "
        "write every file with the same type for a column"
    )


def _is_scalar(kind: pa.DataType) -> bool:
    """Numbers, booleans, text and all-empty columns: values that can be written as text."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    checks = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_boolean,
        pa.types.is_null,
        pa.types.is_string,
        pa.types.is_large_string,
    )
    return any(check(kind) for check in checks)


class _MemoryFiles(pafs.FileSystemHandler):
    """A read-only filesystem over bytes already in memory, for pyarrow.dataset's path discovery."""

    def __init__(self, files: dict[str, pa.Buffer]) -> None:
        self.files = files

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)

    def get_type_name(self) -> str:
        return "wd-memory"

    def normalize_path(self, path: str) -> str:
        return path

    def _info(self, path: str) -> pafs.FileInfo:
        if path in self.files:
            return pafs.FileInfo(path, pafs.FileType.File, size=len(self.files[path]))
        prefix = path.rstrip("/") + "/"
        if any(name.startswith(prefix) for name in self.files):
            return pafs.FileInfo(path, pafs.FileType.Directory)
        return pafs.FileInfo(path, pafs.FileType.NotFound)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [self._info(path) for path in paths]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        prefix = selector.base_dir.rstrip("/") + "/"
        return [self._info(name) for name in self.files if name.startswith(prefix)]

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self.files[path])

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self.files[path])

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("read-only in-memory filesystem")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def refuse_other_delimiters(schema: pa.Schema, source: Source) -> None:
    """A ``;``-separated file parses as one column named ``a;b;y``: say so instead of 'label not found'."""
    if len(schema) != 1:
        return
    header = schema.names[0]
    for delimiter, name in OTHER_DELIMITERS.items():
        if delimiter in header:
            raise DataError(
                f"data file {source.uri} looks {name}-separated (its one column is {header[:80]!r}): "
                "save it comma-separated, or as Parquet"
            )
