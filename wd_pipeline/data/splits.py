"""The splits a run trains and tests on: seeded stratified rows, Parquet files and a manifest.

The split is computed as row indices from the label alone and applied with
``Table.take``, so ingest stays in Arrow from read to write. The folder is keyed by the data
fingerprint, the settings that shape the split and the format of what is written, so a
rerun finds it again and a newer ingest never reads an older folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wd_pipeline import storage
from wd_pipeline.config import Changes, PipelineConfig, check_work_dir
from wd_pipeline.data import groups as grouped
from wd_pipeline.data.profile import DataProfile, SplitProfile, profile_columns
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.data.sources import (
    Fingerprint,
    Source,
    SourceTable,
    locate,
    missing_tokens,
    parse_source,
    read_source,
)
from wd_pipeline.data.validation import CheckedTable, check_features, check_label
from wd_pipeline.errors import DataError

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
# Part of every split folder's key: raise it when what a split folder holds changes shape.
SPLIT_FORMAT = 3  # 3: the training split's profile carries the drift reference and every split its positive rate


@dataclass(frozen=True)
class LabeledData:
    """Raw features, a 0/1 label and the carried columns, aligned row for row.

    Numeric features are float columns (NaN where missing); categorical ones are object
    columns holding ``str`` or None (None where missing). ``carried`` holds the slice and
    group columns in the same form: never model inputs, but kept beside the rows they
    describe (a frame without columns when the run carries none).
    """

    features: pd.DataFrame
    label: np.ndarray
    carried: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.label)

    def frame(self, label: str) -> pd.DataFrame:
        """Features and the 0/1 label as one DataFrame (for dataset logging)."""
        return self.features.assign(**{label: self.label})

    def class_counts(self) -> dict[str, int]:
        positives = int(self.label.sum())
        return {"0": len(self.label) - positives, "1": positives}


def split_rows(label: np.ndarray, config: PipelineConfig, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seeded, stratified train / validation / test split: each split's row numbers, ascending.

    Only the label (and the groups) take part, so the features never leave Arrow (see
    :func:`write_splits`). The test rows are drawn from all rows, then the validation rows
    from the rest, each with :func:`stratified_draw` seeded with the run's seed; with
    ``groups`` (each row's group) by whole groups instead (:mod:`wd_pipeline.data.groups`).
    """
    if groups is not None:
        drawn = grouped.split_rows(
            label, groups, test_fraction=config.test_fraction, val_fraction=config.val_fraction, seed=config.seed
        )
        parts = {name: np.sort(rows) for name, rows in zip(SPLITS, drawn, strict=True)}
        grouped.check_both_classes(label, groups, parts, str(config.group_column))
        return parts
    rest, test = stratified_draw(label, config.test_fraction, config.seed)
    val_share = config.val_fraction / (1.0 - config.test_fraction)
    kept, validation = stratified_draw(label[rest], val_share, config.seed)
    parts = (rest[kept], rest[validation], test)
    return {name: np.sort(rows) for name, rows in zip(SPLITS, parts, strict=True)}


def stratified_draw(label: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, drawn): a seeded draw of ``ceil(share × rows)`` rows keeping the class balance, and the others.

    The rows scikit-learn's ``train_test_split(..., stratify=label, random_state=seed)``
    draws, in the order it returns them (the order matters: the validation draw is made
    from the rest in that order): per-class sizes from its ``_approximate_mode``, then one
    permutation of each class's rows and one of the rest, from the same ``RandomState``.
    scikit-learn collects the rows in Python lists, slow for large tables; these are arrays. ``tests/data/test_ingest.py`` checks both give the same rows.
    """
    from sklearn.utils.extmath import _approximate_mode

    drawn_size = math.ceil(share * len(label))
    _, classes, counts = np.unique(label, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(classes, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    kept_sizes = _approximate_mode(counts, len(label) - drawn_size, rng)
    drawn_sizes = _approximate_mode(counts - kept_sizes, drawn_size, rng)
    rest, drawn = [], []
    for rows, count, kept_size, size in zip(by_class, counts, kept_sizes, drawn_sizes, strict=True):
        shuffled = rows[rng.permutation(count)]
        rest.append(shuffled[:kept_size])
        drawn.append(shuffled[kept_size : kept_size + size])
    return rng.permutation(np.concatenate(rest)), np.concatenate(drawn)


def take(data: LabeledData, rows: np.ndarray) -> LabeledData:
    """The given rows, in ascending order."""
    rows = np.sort(rows)
    carried = _carried_frame(data).iloc[rows].reset_index(drop=True)
    return LabeledData(data.features.iloc[rows].reset_index(drop=True), data.label[rows], carried)


def concat(parts: list[LabeledData]) -> LabeledData:
    """Rows of several parts, one after the other (train + validation for CV and refit)."""
    features = pd.concat([part.features for part in parts], ignore_index=True)
    carried = pd.concat([_carried_frame(part) for part in parts], ignore_index=True)
    return LabeledData(features, np.concatenate([part.label for part in parts]), carried)


def _carried_frame(data: LabeledData) -> pd.DataFrame:
    """The carried columns indexed like the rows, also when there are none (a frame built without rows)."""
    if len(data.carried.columns) or len(data.carried) == len(data):
        return data.carried
    return pd.DataFrame(index=pd.RangeIndex(len(data)))


def check_folds(folder: str | Path, folds: int) -> None:
    """Stratified k-fold needs at least k rows of each class in the training data, and k groups when grouped."""
    if folds == 1:
        return
    manifest = read_manifest(folder)
    group_column = manifest.get("group_column")
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
    if group_column:
        development = sum(manifest["splits"][name]["groups"] for name in ("train", "validation"))
        grouped.check_group_folds(folds, development, group_column)


def split_key(config: PipelineConfig, sha256: str) -> str:
    """Folder name for one split of one source: content hash + the settings that shape it + the format."""
    settings = json.dumps({**config.settings_that_change(Changes.SPLITS), "format": SPLIT_FORMAT}, sort_keys=True)
    return f"{sha256[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def write_splits(data: CheckedTable, rows: dict[str, np.ndarray], folder: Path) -> DataProfile:
    """Write one Parquet file per split; returns each split's profile, computed by the thread that wrote it.

    The three files are written by two threads (Arrow releases the GIL while encoding).
    Only the label and the categorical columns are dictionary-encoded: random-looking floats
    rarely repeat, so Arrow builds a dictionary only to drop it, which tripled the write time.
    The categorical columns arrive dictionary-encoded and are written as such, but without
    the Arrow schema in the file, so a reader gets them back as plain text. No column
    statistics: nothing filters these files, and computing them is a good part of the write.
    """
    folder.mkdir(parents=True, exist_ok=True)
    label = data.schema.label
    carried = [spec.name for spec in data.schema.carried if spec.role is Role.CATEGORICAL]
    encoded = [label, *data.schema.categorical(), *carried]

    def write(name: str) -> SplitProfile:
        part = data.features.take(rows[name])
        stored = part
        for column in data.schema.carried_names():
            stored = stored.append_column(column, data.carried.column(column).take(rows[name]))
        pq.write_table(
            stored.append_column(label, pa.array(data.label[rows[name]], type=pa.int8())),
            folder / f"{name}.parquet",
            use_dictionary=encoded,
            store_schema=False,
            write_statistics=False,
        )
        columns = profile_columns(part, data.schema, reference=name == "train")
        positives = data.label[rows[name]]
        return SplitProfile(name, part.num_rows, columns, float(positives.mean()) if len(positives) else None)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return DataProfile(tuple(pool.map(write, SPLITS)))


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Written last, atomically, so that its presence means the folder is complete."""
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def build_manifest(
    source: Source,
    identity: Fingerprint,
    *,
    parsed: SourceTable,
    data: CheckedTable,
    rows: dict[str, np.ndarray],
    profile: DataProfile,
    config: PipelineConfig,
) -> dict[str, Any]:
    """What a reader needs to trust the splits: provenance, sizes, balance, schema, profile, what was left out."""
    manifest = {
        "source": source.uri,
        "sha256": identity.sha256,
        "files": [file.to_dict() for file in identity.files],
        "rows": parsed.table.num_rows,
        "label": config.label,
        "positive_class": config.positive_class,
        "features": data.schema.names(),
        "schema": data.schema.to_dict(),
        "missing_values": list(missing_tokens(config.na_values)),
        "dropped_label_rows": data.dropped_label_rows,
        "dropped_columns": [column.to_dict() for column in data.dropped_columns],
        "seed": config.seed,
        "splits": {
            name: {
                "rows": len(part),
                "classes": data.class_counts(part),
                "positive_rate": round(float(data.label[part].mean()), 6),
            }
            for name, part in rows.items()
        },
        "profile": profile.to_dict(),
    }
    if config.group_column:
        column = data.carried.column(config.group_column)
        manifest["group_column"] = config.group_column
        for name, part in rows.items():
            manifest["splits"][name]["groups"] = len(pc.unique(column.take(part)))
    return manifest


def prepare(config: PipelineConfig, work_dir: storage.Location | None = None) -> storage.Location:
    """Read, validate, split and write; returns the folder of the splits and manifest.

    Splits already written for the same bytes and settings are reused, which is what lets
    a rerun after a crash skip straight to the grid points still missing. The bytes are
    hashed while they are parsed (hashlib and Arrow both release the GIL), so a reused
    split still costs one parse, in the time of the hash.
    """
    source = locate(config.data)
    check_work_dir(work_dir or config.work_dir)
    read = read_source(source)
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(read.fingerprint)
        parsed = parse_source(read, config.na_values, text_as_dictionary=True)
        identity = hashing.result()
    del read  # the file's bytes: the parsed table holds its own copy of the data from here on
    folder = storage.join(work_dir or config.work_dir, "splits", split_key(config, identity.sha256))
    if not storage.exists(storage.join(folder, MANIFEST)):
        labelled = check_label(parsed.table, config)
        # The split needs only the label: it runs while the feature columns are checked.
        with ThreadPoolExecutor(max_workers=1) as pool:
            split = pool.submit(split_rows, labelled.label, config, labelled.groups)
            data = check_features(parsed.table, config, labelled, where=parsed.where, declared=parsed.declared)
            rows = split.result()
        with storage.writing_folder(folder, last=MANIFEST) as local:
            profile = write_splits(data, rows, local)
            write_manifest(
                local,
                build_manifest(source, identity, parsed=parsed, data=data, rows=rows, profile=profile, config=config),
            )
    check_folds(folder, config.folds)
    return folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    return json.loads((storage.local_copy(folder) / MANIFEST).read_text())


def read_schema(folder: str | Path) -> TableSchema:
    """The roles and source types ingest decided, as the splits of ``folder`` hold them."""
    return TableSchema.from_dict(read_manifest(folder)["schema"])


def read_profile(folder: str | Path) -> DataProfile:
    return DataProfile.from_dict(read_manifest(folder)["profile"])


def load_split(folder: str | Path, name: str) -> LabeledData:
    """One split back as raw features and 0/1 label.

    Every training task of a run (one per mode and fold, in threads of one process) reads the
    same train and validation splits, so the last few reads are kept, keyed by path, size and
    modification time of the split and its manifest: a rewritten split is read again. Each
    caller gets its own label array and a copy-on-write view of the features.
    """
    split = storage.local_copy(folder).resolve() / f"{name}.parquet"
    try:
        stamp = tuple(value for path in (split, split.parent / MANIFEST) for value in _stamp(path))
    except OSError:  # let the uncached read raise its usual error
        return _read_split(split)
    cached = _cached_split(split, stamp)
    return LabeledData(cached.features.copy(deep=False), cached.label.copy(), cached.carried.copy(deep=False))


def read_splits(folder: str | Path, names: list[str]) -> LabeledData:
    """Several splits as one, rows in the order of ``names``, read afresh and not kept (see :func:`load_split`).

    What the refit trains on (train + validation): one conversion of the files' rows, not a
    frame per split and their concatenation beside them.
    """
    local = storage.local_copy(folder).resolve()
    return _read_split(*(local / f"{name}.parquet" for name in names))


def read_split_head(folder: str | Path, name: str, rows: int) -> LabeledData:
    """The first ``rows`` rows of a split (all of a shorter one), read without the rest, converted as
    :func:`load_split` converts the whole."""
    split = storage.local_copy(folder).resolve() / f"{name}.parquet"
    schema = read_schema(split.parent)
    first = next(pq.ParquetFile(split).iter_batches(batch_size=rows), None)
    table = pa.Table.from_batches([first]) if first is not None else pq.read_schema(split).empty_table()
    label = table.column(schema.label).to_numpy().astype(np.int8)
    carried = _frame(table, schema.carried) if schema.carried else pd.DataFrame(index=pd.RangeIndex(len(label)))
    return LabeledData(_frame(table, schema.columns), label, carried)


def forget_cached_splits() -> None:
    """Drop the splits :func:`load_split` keeps: for when no task of the grid will read them again."""
    _cached_split.cache_clear()


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=4)
def _cached_split(split: Path, stamp: tuple[int, ...]) -> LabeledData:
    return _read_split(split)


def _read_split(split: Path, *more: Path) -> LabeledData:
    """One split file (or several, one after the other) as :class:`LabeledData`, holding its feature columns only
    once at any moment.

    Each numeric column becomes a pandas column of its own (consolidating them into one
    block would hold a second copy of all of them), and each Arrow column is released as
    soon as it is converted (``self_destruct``: nothing else refers to the table by then).
    """
    schema = read_schema(split.parent)
    table = pa.concat_tables([pq.read_table(path) for path in (split, *more)]) if more else pq.read_table(split)
    label = table.column(schema.label).to_numpy().astype(np.int8)
    carried = _frame(table, schema.carried) if schema.carried else pd.DataFrame(index=pd.RangeIndex(len(label)))
    text = _text(table, schema.columns)
    numbers = table.select([spec.name for spec in schema.columns if spec.name not in text])
    del table
    features = numbers.to_pandas(split_blocks=True, self_destruct=True)
    del numbers
    return LabeledData(_with_text(features, text, schema.columns), label, carried)


def _frame(table: pa.Table, columns: tuple[ColumnSpec, ...]) -> pd.DataFrame:
    """These columns of a split: numbers as floats (NaN where missing), categories as ``str`` or None."""
    text = _text(table, columns)
    numbers = table.select([spec.name for spec in columns if spec.name not in text])
    return _with_text(numbers.to_pandas(split_blocks=True), text, columns)


def _text(table: pa.Table, columns: tuple[ColumnSpec, ...]) -> dict[str, pd.Series]:
    """The categorical columns as object Series: pandas' own string dtypes hold NaN or pd.NA, the model side
    takes ``str`` or None."""
    return {
        spec.name: pd.Series(table.column(spec.name).to_numpy(zero_copy_only=False), dtype=object)
        for spec in columns
        if spec.role is Role.CATEGORICAL
    }


def _with_text(frame: pd.DataFrame, text: dict[str, pd.Series], columns: tuple[ColumnSpec, ...]) -> pd.DataFrame:
    """``frame`` (the numeric columns) with the categorical ones put in their places."""
    for position, spec in enumerate(columns):
        if spec.name in text:
            frame.insert(position, spec.name, text[spec.name])
    return frame
