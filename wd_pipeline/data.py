"""Ingest: read a CSV or Parquet source, check it fits the configuration, split it.

Sources are opened through ``pyarrow.fs`` so a local path and a URI (``file://``,
``s3://``, ``gs://`` …) take the same code path. The bytes are read once: the same buffer
gives the sha256 fingerprint that keys every later result and the table itself.

Ingest stays in Arrow from read to write (validation with ``pyarrow.compute``, the split as
row indices computed from the label alone, ``Table.take``, ``pq.write_table``): a pandas
round trip of the features cost more than the read itself on a 1M-row file
(``benchmarks/``, issue #5).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from wd_pipeline.config import PROJECT_ROOT, PipelineConfig, check_work_dir
from wd_pipeline.errors import DataError, first_line

SPLITS = ("train", "validation", "test")
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
MANIFEST = "manifest.json"
TRUE_NAMES = {"1", "true"}


@dataclass(frozen=True)
class Source:
    """A readable location: the filesystem that holds it and the path within it."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_parquet_by_name(self) -> bool:
        return self.path.lower().endswith(PARQUET_SUFFIXES)


@dataclass(frozen=True)
class LabeledData:
    """Raw numeric features and a 0/1 label, aligned row for row."""

    features: pd.DataFrame
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def frame(self, label: str) -> pd.DataFrame:
        """Features and the 0/1 label as one DataFrame (for dataset logging)."""
        return self.features.assign(**{label: self.label})

    def class_counts(self) -> dict[str, int]:
        positives = int(self.label.sum())
        return {"0": len(self.label) - positives, "1": positives}


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


@dataclass(frozen=True)
class CheckedTable:
    """A validated source still in Arrow: numeric feature columns and the 0/1 label, row for row."""

    features: pa.Table
    label: np.ndarray

    def class_counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        label = self.label if rows is None else self.label[rows]
        positives = int(label.sum())
        return {"0": len(label) - positives, "1": positives}


def validate(table: pa.Table, config: PipelineConfig) -> CheckedTable:
    """Check the table against the configured columns; features become float columns, the label 0/1."""
    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"data has duplicate columns {duplicates}: give every column a unique name")
    if table.num_rows == 0:
        raise DataError("data holds a header but no rows: pass a file with data rows under the header")
    if config.label not in names:
        close = difflib.get_close_matches(config.label, names, n=1, cutoff=0.6) or [
            name for name in names if name.lower() == config.label.lower()
        ]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"label column {config.label!r} not found; columns are {_preview(names)}.{hint} "
            "Pass --label with the name of the binary target column"
        )
    features = _feature_columns(names, config)
    label = encode_label(table.column(config.label), config.label, config.positive_class)
    data = CheckedTable(_numeric_features(table, features), label)
    _check_class_sizes(data.class_counts(), config)
    return data


def _feature_columns(names: list[str], config: PipelineConfig) -> list[str]:
    if config.features is None:
        features = [name for name in names if name != config.label]
    else:
        missing = [name for name in config.features if name not in names]
        if missing:
            raise DataError(f"feature columns {missing} not found; columns are {_preview(names)}")
        if config.label in config.features:
            raise DataError(f"label column {config.label!r} is also listed as a feature: remove it from features")
        features = list(config.features)
    if not features:
        raise DataError("data has no feature columns besides the label")
    return features


def encode_label(column: pa.ChunkedArray, name: str, positive_class: str | None) -> np.ndarray:
    """Map a binary label (0/1, booleans, or two strings) to 0/1 with the positive class as 1."""
    if column.null_count:
        raise DataError(f"label column {name!r} has {column.null_count} missing values: drop or fill those rows")
    kind = column.type
    values = pc.unique(column).to_pylist()
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if not set(values) <= {0, 1}:
            raise DataError(
                f"label column {name!r} must be binary (0/1, booleans or two strings); "
                f"it holds {_preview(sorted(values))}: map it to two classes, or pass --label with another column"
            )
        if positive_class is not None and positive_class.lower() not in TRUE_NAMES:
            raise DataError(
                f"label column {name!r} holds 0/1 values, so the positive class is 1; "
                f"positive class {positive_class!r} only applies to string labels: leave it empty"
            )
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int8)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        strings = sorted(str(v) for v in values)
        if len(strings) > 2:
            raise DataError(
                f"label column {name!r} must be binary; it holds {len(strings)} classes {_preview(strings)}: "
                "map it to two classes, or pass --label with another column"
            )
        if positive_class is None:
            raise DataError(
                f"label column {name!r} holds strings {strings}: name the positive class, "
                f"e.g. --positive-class {strings[-1]!r}"
            )
        if positive_class not in strings:
            raise DataError(
                f"positive class {positive_class!r} is not a value of label column {name!r}; it holds {strings}"
            )
        return np.asarray(pc.equal(column.cast(pa.string()), positive_class).to_numpy(zero_copy_only=False), dtype=np.int8)
    raise DataError(f"label column {name!r} has type {kind}; it must be 0/1, booleans or two strings")


def _numeric_features(table: pa.Table, features: list[str]) -> pa.Table:
    non_numeric = [
        f"{name} ({table.schema.field(name).type})"
        for name in features
        if not _is_numeric(table.schema.field(name).type)
    ]
    if non_numeric:
        raise DataError(
            f"features must be numeric; non-numeric columns: {_preview(non_numeric)}. "
            "Encode them, or leave them out with --features"
        )
    # Floats keep their width (a float32 source stays half the size through split and write);
    # integers, booleans, decimals and all-empty columns become float64. ``safe=False`` rounds
    # an int64 beyond 2**53 as pandas' astype did, instead of refusing it.
    columns = [
        column if pa.types.is_floating(column.type) else pc.cast(column, pa.float64(), safe=False)
        for column in table.select(features).columns
    ]
    bad = {name: count for name, column in zip(features, columns, strict=True) if (count := _not_finite(column))}
    if bad:
        raise DataError(
            f"features hold missing or infinite values (column: count) {bad}: clean, impute or drop those rows"
        )
    return pa.table(columns, names=features)


def _not_finite(column: pa.ChunkedArray) -> int:
    """Missing (null or NaN) and infinite values of one float column."""
    finite = pc.sum(pc.is_finite(column)).as_py() or 0  # nulls are skipped, so they count as not finite
    return len(column) - finite


def _is_numeric(kind: pa.DataType) -> bool:
    # An all-empty CSV column arrives as the null type: let it through so the finite-value
    # check reports it as missing values rather than as a type problem.
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)
    return any(check(kind) for check in checks)


def _check_class_sizes(counts: dict[str, int], config: PipelineConfig) -> None:
    if min(counts.values()) == 0:
        only = "1 (positive)" if counts["0"] == 0 else "0 (negative)"
        raise DataError(f"label column {config.label!r} has a single class, {only}: a classifier needs both")
    smallest = min(config.val_fraction, config.test_fraction)
    needed = max(config.min_rows_per_class, math.ceil(2 / smallest))
    if min(counts.values()) < needed:
        raise DataError(
            f"too few rows per class {counts}: each class needs at least {needed} rows so every split holds both"
        )


def split_rows(label: np.ndarray, config: PipelineConfig) -> dict[str, np.ndarray]:
    """Seeded, stratified train / validation / test split: each split's row numbers, ascending.

    Only the label takes part, so the features never leave Arrow (see :func:`write_splits`).
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(label))
    rest, test = train_test_split(index, test_size=config.test_fraction, stratify=label, random_state=config.seed)
    val_share = config.val_fraction / (1.0 - config.test_fraction)
    train, validation = train_test_split(
        rest, test_size=val_share, stratify=label[rest], random_state=config.seed
    )
    return {name: np.sort(rows) for name, rows in zip(SPLITS, (train, validation, test), strict=True)}


def take(data: LabeledData, rows: np.ndarray) -> LabeledData:
    """The given rows, in ascending order."""
    rows = np.sort(rows)
    return LabeledData(data.features.iloc[rows].reset_index(drop=True), data.label[rows])


def concat(parts: list[LabeledData]) -> LabeledData:
    """Rows of several parts, one after the other (train + validation for CV and refit)."""
    features = pd.concat([part.features for part in parts], ignore_index=True)
    return LabeledData(features, np.concatenate([part.label for part in parts]))


def check_folds(folder: str | Path, folds: int) -> None:
    """Stratified k-fold needs at least k rows of each class in the training data."""
    if folds == 1:
        return
    manifest = read_manifest(folder)
    per_class = {
        label: sum(manifest["splits"][name]["classes"][label] for name in ("train", "validation"))
        for label in ("0", "1")
    }
    smallest = min(per_class.values())
    if smallest < folds:
        raise DataError(
            f"{folds} folds need at least {folds} rows of each class in the training data; "
            f"the smallest class has {smallest}: lower --folds"
        )


def split_key(config: PipelineConfig, sha256: str) -> str:
    """Folder name for one split of one source: content hash + the settings that shape it."""
    settings = json.dumps(
        config.model_dump(include={"label", "positive_class", "features", "val_fraction", "test_fraction", "seed"}),
        sort_keys=True,
    )
    return f"{sha256[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def write_splits(data: CheckedTable, rows: dict[str, np.ndarray], folder: Path, manifest: dict[str, Any]) -> None:
    """Write one Parquet file per split, then the manifest last so its presence means complete.

    The three files are written by two threads (Arrow releases the GIL while encoding).
    Float features are written without dictionary encoding: random-looking floats rarely
    repeat, so Arrow builds a dictionary only to drop it, which tripled the write time.
    """
    folder.mkdir(parents=True, exist_ok=True)
    label = manifest["label"]

    def write(name: str) -> None:
        part = data.features.take(rows[name]).append_column(label, pa.array(data.label[rows[name]], type=pa.int8()))
        pq.write_table(part, folder / f"{name}.parquet", use_dictionary=[label])

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, SPLITS))
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def build_manifest(
    source: Source, sha256: str, table: pa.Table, data: CheckedTable, rows: dict[str, np.ndarray], config: PipelineConfig
) -> dict[str, Any]:
    """What a reader needs to trust the splits: provenance, sizes, balance, schema."""
    features = data.features.column_names
    return {
        "source": source.uri,
        "sha256": sha256,
        "rows": table.num_rows,
        "label": config.label,
        "positive_class": config.positive_class,
        "features": features,
        "schema": {name: str(table.schema.field(name).type) for name in features},
        "seed": config.seed,
        "splits": {
            name: {
                "rows": len(part),
                "classes": data.class_counts(part),
                "positive_rate": round(float(data.label[part].mean()), 6),
            }
            for name, part in rows.items()
        },
    }


def prepare(config: PipelineConfig, work_dir: Path | None = None) -> Path:
    """Read, validate, split and write; returns the folder of the splits and manifest.

    Splits already written for the same bytes and settings are reused, which is what lets
    a rerun after a crash skip straight to the grid points still missing.
    """
    source = locate(config.data)
    check_work_dir(work_dir or config.work_dir)
    raw = read_bytes(source)
    sha256 = fingerprint(raw)
    folder = Path(work_dir or config.work_dir) / "splits" / split_key(config, sha256)
    if not (folder / MANIFEST).exists():
        table = parse_table(raw, source)
        del raw
        data = validate(table, config)
        rows = split_rows(data.label, config)
        write_splits(data, rows, folder, build_manifest(source, sha256, table, data, rows, config))
    check_folds(folder, config.folds)
    return folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def load_split(folder: str | Path, name: str) -> LabeledData:
    """One split back as raw features and 0/1 label.

    Every training task of a run (one per mode and fold, in threads of one process) reads the
    same train and validation splits, so the last few reads are kept, keyed by path, size and
    modification time of the split and its manifest: a rewritten split is read again. Each
    caller gets its own label array and a copy-on-write view of the features.
    """
    split = Path(folder).resolve() / f"{name}.parquet"
    try:
        stamp = tuple(value for path in (split, split.parent / MANIFEST) for value in _stamp(path))
    except OSError:  # let the uncached read raise its usual error
        return _read_split(split)
    cached = _cached_split(split, stamp)
    return LabeledData(cached.features.copy(deep=False), cached.label.copy())


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=4)
def _cached_split(split: Path, stamp: tuple[int, ...]) -> LabeledData:
    return _read_split(split)


def _read_split(split: Path) -> LabeledData:
    manifest = read_manifest(split.parent)
    frame = pq.read_table(split).to_pandas()
    label = frame.pop(manifest["label"]).to_numpy(dtype=np.int8)
    return LabeledData(frame[manifest["features"]], label)


def _preview(items: list[Any], limit: int = 12) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:limit])
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"
