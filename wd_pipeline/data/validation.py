"""Does a table fit the run's settings: label, feature columns, numeric values, class sizes.

Validation runs on the Arrow table with ``pyarrow.compute``: a pandas round trip of the
features cost more than the read itself on a large file.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wd_pipeline.config import PipelineConfig
from wd_pipeline.errors import DataError

TRUE_NAMES = {"1", "true"}


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
        return np.asarray(
            pc.equal(column.cast(pa.string()), positive_class).to_numpy(zero_copy_only=False), dtype=np.int8
        )
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


def _preview(items: list[Any], limit: int = 12) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:limit])
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"
