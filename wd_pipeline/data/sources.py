"""Where a data source is and what it holds: locate it, confine it, read and parse it once.

Sources are opened through ``pyarrow.fs`` so a local path and a URI (``file://``,
``s3://``, ``gs://`` …) take the same code path. The bytes are read once: the same buffer
gives the sha256 fingerprint that keys every later result and the table itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from wd_pipeline.config import PROJECT_ROOT
from wd_pipeline.errors import DataError, first_line

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Source:
    """A readable location: the filesystem that holds it and the path within it."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_parquet_by_name(self) -> bool:
        return self.path.lower().endswith(PARQUET_SUFFIXES)


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
    """Resolve ``data`` to a source that exists, or say what to pass instead.

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
        raise DataError(f"data file not found: {data}. Pass --data with the path of a CSV or Parquet file")
    if info.type != pafs.FileType.File:
        raise DataError(f"data source {data} is not a file. Pass --data with the path of a CSV or Parquet file")
    return Source(filesystem, path, uri)


def read_bytes(source: Source) -> bytes:
    """All bytes of the source; empty sources are refused here, before any parsing."""
    try:
        with source.filesystem.open_input_stream(source.path) as stream:
            raw = stream.read()
    except OSError as exc:
        raise DataError(f"cannot read data file {source.uri}: {exc}") from None
    if not raw:
        raise DataError(f"data file {source.uri} is empty. Pass a CSV with a header row or a Parquet file")
    return raw


def fingerprint(raw: bytes) -> str:
    """sha256 of the source bytes: the identity of the data everywhere downstream."""
    return hashlib.sha256(raw).hexdigest()


def parse_table(raw: bytes, source: Source) -> pa.Table:
    """Parse Parquet (by magic bytes) or CSV into an Arrow table."""
    looks_parquet = raw[:4] == PARQUET_MAGIC
    if source.is_parquet_by_name or looks_parquet:
        if not (looks_parquet and raw[-4:] == PARQUET_MAGIC):
            raise DataError(
                f"data file {source.uri} is not a valid Parquet file (truncated or another format): "
                "write it again completely, or pass a CSV"
            )
        try:
            return pq.read_table(pa.BufferReader(raw))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"data file {source.uri} is not a readable Parquet file: {exc}") from None
    try:
        table = pacsv.read_csv(pa.BufferReader(raw))
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise DataError(
            f"data file {source.uri} is neither Parquet nor readable CSV: {first_line(exc)}. "
            "Pass a comma-separated file with a header row, or a Parquet file"
        ) from None
    _refuse_other_delimiters(table, source)
    return table


OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _refuse_other_delimiters(table: pa.Table, source: Source) -> None:
    """A ``;``-separated file parses as one column named ``a;b;y``: say so instead of 'label not found'."""
    if table.num_columns != 1:
        return
    header = table.column_names[0]
    for delimiter, name in OTHER_DELIMITERS.items():
        if delimiter in header:
            raise DataError(
                f"data file {source.uri} looks {name}-separated (its one column is {header[:80]!r}): "
                "save it comma-separated, or as Parquet"
            )
