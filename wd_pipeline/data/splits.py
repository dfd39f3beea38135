"""The splits a run trains and tests on: seeded stratified rows, Parquet files and a manifest.

The split is computed as row indices from the label alone and applied with
``Table.take``, so ingest stays in Arrow from read to write. The folder is keyed by the data
fingerprint and the settings that shape the split, so a rerun finds it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wd_pipeline.config import Changes, PipelineConfig, check_work_dir
from wd_pipeline.data.sources import SourceBytes, locate, parse_source, read_source
from wd_pipeline.data.validation import CheckedTable, validate
from wd_pipeline.errors import DataError

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"


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


def split_rows(label: np.ndarray, config: PipelineConfig) -> dict[str, np.ndarray]:
    """Seeded, stratified train / validation / test split: each split's row numbers, ascending.

    Only the label takes part, so the features never leave Arrow (see :func:`write_splits`).
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(label))
    rest, test = train_test_split(index, test_size=config.test_fraction, stratify=label, random_state=config.seed)
    val_share = config.val_fraction / (1.0 - config.test_fraction)
    train, validation = train_test_split(rest, test_size=val_share, stratify=label[rest], random_state=config.seed)
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
    settings = json.dumps(config.settings_that_change(Changes.SPLITS), sort_keys=True)
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
    read: SourceBytes,
    *,
    table: pa.Table,
    data: CheckedTable,
    rows: dict[str, np.ndarray],
    config: PipelineConfig,
) -> dict[str, Any]:
    """What a reader needs to trust the splits: provenance, sizes, balance, schema."""
    features = data.features.column_names
    return {
        "source": read.source.uri,
        "sha256": read.sha256,
        "files": [file.to_dict() for file in read.files],
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
    read = read_source(source)
    folder = Path(work_dir or config.work_dir) / "splits" / split_key(config, read.sha256)
    if not (folder / MANIFEST).exists():
        table = parse_source(read, config.na_values).table
        data = validate(table, config)
        rows = split_rows(data.label, config)
        write_splits(data, rows, folder, build_manifest(read, table=table, data=data, rows=rows, config=config))
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
