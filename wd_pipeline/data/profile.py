"""What each split holds, column by column: counts, missing shares, and the spread or the top categories.

Computed with ``pyarrow.compute`` on the split as written, so it describes exactly what
training and testing read. It goes into the split manifest and, from the ingest flow, to
MLflow and Prefect as a table a person can read.

The training split's profile also carries, per column, a :class:`ColumnReference`: how its
present values spread over quantile bins or categories, and how many are missing. That is
what later data is compared with (:mod:`wd_pipeline.data.drift`), so it travels with the
registered model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wd_pipeline.data.schema import Role, TableSchema

TOP_CATEGORIES = 10  # categories kept per column in the profile
TOP_SHOWN = 3  # of which the readable table shows this many
REFERENCE_QUANTILES = tuple(step / 10 for step in range(1, 10))  # deciles: the cut points of the reference bins
REFERENCE_CATEGORIES = 50  # categories a reference keeps; rarer ones are pooled into its ``other`` share
EDGE_SAMPLE = 16_384  # values the deciles are read from (every k-th of a longer column)


@dataclass(frozen=True)
class CategoryShare:
    """One category of a column: its value, its rows, and their share of the split's rows."""

    value: str
    count: int
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "count": self.count, "share": self.share}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CategoryShare:
        return cls(value=str(raw["value"]), count=int(raw["count"]), share=float(raw["share"]))


@dataclass(frozen=True)
class ColumnReference:
    """How one column of the training split spreads, in the form drift is measured against.

    Numeric: ``edges`` are the distinct deciles of the present values above the smallest
    one (fewer than nine when values repeat); k edges make k + 1 bins, the first open below
    and the last open above, each closed on its left edge, and ``shares`` holds the share of
    present values in each bin. Categorical: ``categories`` are the most frequent
    categories (at most :data:`REFERENCE_CATEGORIES`) with their share of present values in
    ``shares``; ``other`` is the share of present values in the rarer categories left out
    (0 when the list is complete). ``missing`` is the share of all rows that are missing.
    """

    missing: float
    shares: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    other: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"missing": self.missing, "shares": list(self.shares)}
        if self.categories:
            raw.update({"categories": list(self.categories), "other": self.other})
        else:
            raw["edges"] = list(self.edges)
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnReference:
        return cls(
            missing=float(raw["missing"]),
            shares=tuple(float(share) for share in raw["shares"]),
            edges=tuple(float(edge) for edge in raw.get("edges", ())),
            categories=tuple(str(value) for value in raw.get("categories", ())),
            other=float(raw.get("other", 0.0)),
        )


@dataclass(frozen=True)
class ColumnProfile:
    """One column of one split. Numeric columns fill mean/std/min/max (over present values), categorical
    ones ``distinct`` and ``top``; the other fields stay None / empty."""

    name: str
    role: Role
    rows: int
    missing: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    distinct: int | None = None
    top: tuple[CategoryShare, ...] = field(default=())
    reference: ColumnReference | None = None  # the training split's only

    @property
    def missing_share(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "name": self.name,
            "role": str(self.role),
            "rows": self.rows,
            "missing": self.missing,
            "missing_share": round(self.missing_share, 6),
        }
        if self.role is Role.NUMERIC:
            raw.update({"mean": self.mean, "std": self.std, "min": self.min, "max": self.max})
        else:
            raw.update({"distinct": self.distinct, "top": [share.to_dict() for share in self.top]})
        if self.reference is not None:
            raw["reference"] = self.reference.to_dict()
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnProfile:
        return cls(
            name=str(raw["name"]),
            role=Role(raw["role"]),
            rows=int(raw["rows"]),
            missing=int(raw["missing"]),
            mean=raw.get("mean"),
            std=raw.get("std"),
            min=raw.get("min"),
            max=raw.get("max"),
            distinct=raw.get("distinct"),
            top=tuple(CategoryShare.from_dict(item) for item in raw.get("top", ())),
            reference=ColumnReference.from_dict(raw["reference"]) if raw.get("reference") else None,
        )


@dataclass(frozen=True)
class SplitProfile:
    """Every feature column of one split, in schema order, and the share of positive labels."""

    split: str
    rows: int
    columns: tuple[ColumnProfile, ...]
    positive_rate: float | None = None

    def column(self, name: str) -> ColumnProfile:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"split": self.split, "rows": self.rows}
        if self.positive_rate is not None:
            raw["positive_rate"] = self.positive_rate
        return {**raw, "columns": [column.to_dict() for column in self.columns]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SplitProfile:
        rate = raw.get("positive_rate")
        return cls(
            split=str(raw["split"]),
            rows=int(raw["rows"]),
            columns=tuple(ColumnProfile.from_dict(item) for item in raw["columns"]),
            positive_rate=None if rate is None else float(rate),
        )


@dataclass(frozen=True)
class DataProfile:
    """The profile of every split of one ingest."""

    splits: tuple[SplitProfile, ...]

    def split(self, name: str) -> SplitProfile:
        for split in self.splits:
            if split.split == name:
                return split
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"splits": [split.to_dict() for split in self.splits]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataProfile:
        return cls(splits=tuple(SplitProfile.from_dict(item) for item in raw["splits"]))

    def table_rows(self) -> list[dict[str, str]]:
        """One row per split and column, every cell text: for a Prefect table artifact or a CSV."""
        return [{"split": split.split, **_cells(column)} for split in self.splits for column in split.columns]

    def markdown(self) -> str:
        """A section per split with one table row per column."""
        headers = ["column", "role", "missing", "mean", "std", "min", "max", "distinct", "top categories"]
        lines = ["# Data profile", ""]
        for split in self.splits:
            lines += [f"## {split.split} ({split.rows:,} rows)", ""]
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            for column in split.columns:
                cells = _cells(column)
                lines.append("| " + " | ".join(_escape(cells[header]) for header in headers) + " |")
            lines.append("")
        return "\n".join(lines)


def _cells(column: ColumnProfile) -> dict[str, str]:
    top = ", ".join(f"{share.value} {100 * share.share:.1f} %" for share in column.top[:TOP_SHOWN])
    return {
        "column": column.name,
        "role": str(column.role),
        "missing": f"{100 * column.missing_share:.1f} %",
        "mean": _number(column.mean),
        "std": _number(column.std),
        "min": _number(column.min),
        "max": _number(column.max),
        "distinct": "" if column.distinct is None else str(column.distinct),
        "top categories": top,
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def profile_columns(
    table: pa.Table, schema: TableSchema, top: int = TOP_CATEGORIES, *, reference: bool = False
) -> tuple[ColumnProfile, ...]:
    """The profile of each schema column of ``table`` (columns in the form :func:`validation.conform` gives;
    categorical ones may also be dictionary-encoded); with ``reference``, each column's drift reference too."""
    return tuple(_profile(table.column(spec.name), spec.name, spec.role, top, reference) for spec in schema.columns)


def profile_splits(parts: Mapping[str, pa.Table], schema: TableSchema) -> DataProfile:
    return DataProfile(
        tuple(SplitProfile(name, table.num_rows, profile_columns(table, schema)) for name, table in parts.items())
    )


def _profile(column: pa.ChunkedArray, name: str, role: Role, top: int, reference: bool) -> ColumnProfile:
    rows, missing = len(column), column.null_count
    if role is Role.NUMERIC:
        low, high = min_max(column)
        return ColumnProfile(
            name,
            role,
            rows,
            missing,
            mean=_finite(pc.mean(column).as_py()),
            std=_finite(pc.stddev(column, ddof=1).as_py()),
            min=_finite(low),
            max=_finite(high),
            reference=_numeric_reference(column) if reference else None,
        )
    ranked = ranked_categories(column)
    kept = ranked.slice(0, top)
    shares = tuple(
        CategoryShare(str(value), int(count), count / rows)
        for value, count in zip(kept["values"].to_pylist(), kept["counts"].to_pylist(), strict=True)
    )
    return ColumnProfile(
        name,
        role,
        rows,
        missing,
        distinct=ranked.num_rows,
        top=shares,
        reference=_categorical_reference(ranked, missing / rows if rows else 0.0) if reference else None,
    )


def ranked_categories(column: pa.ChunkedArray) -> pa.Table:
    """Every present category as text with its count, most frequent first; ties alphabetically, so the same
    split always gives the same profile."""
    counts = pc.value_counts(column)
    counts = counts.filter(counts.field("values").is_valid())
    ranked = pa.table({"values": pc.cast(counts.field("values"), pa.string()), "counts": counts.field("counts")})
    return ranked.take(pc.sort_indices(ranked, sort_keys=[("counts", "descending"), ("values", "ascending")]))


def _categorical_reference(ranked: pa.Table, missing: float) -> ColumnReference:
    present = int(pc.sum(ranked["counts"]).as_py() or 0)
    kept = ranked.slice(0, REFERENCE_CATEGORIES)
    shares = _shares(np.asarray(kept["counts"].to_pylist(), dtype=np.int64), present)
    return ColumnReference(
        missing=missing,
        shares=shares,
        categories=tuple(str(value) for value in kept["values"].to_pylist()),
        other=max(0.0, 1.0 - sum(shares)) if ranked.num_rows > REFERENCE_CATEGORIES else 0.0,
    )


def _numeric_reference(column: pa.ChunkedArray) -> ColumnReference:
    values = present_values(column)
    edges = decile_edges(values)
    return ColumnReference(
        missing=(len(column) - len(values)) / len(column) if len(column) else 0.0,
        shares=_shares(bin_counts(values, edges)),
        edges=edges,
    )


def decile_edges(values: np.ndarray) -> tuple[float, ...]:
    """The distinct deciles of ``values`` (present values, in any order), without the smallest value (a bin below
    the minimum would always be empty).

    Each decile is a value that occurs, not one interpolated between two: on a column of few
    distinct values (a 0/1 flag, a count) the bins fall between the values themselves. Above
    :data:`EDGE_SAMPLE` values the deciles are those of every k-th value, evenly spread over the
    column: a full selection costs a good part of ingest on wide tables, and the bins' shares
    are counted on every value anyway, so slightly uneven bins change nothing downstream.
    """
    if not len(values):
        return ()
    sample = values[:: max(1, len(values) // EDGE_SAMPLE)]
    cuts = np.unique(np.quantile(sample, REFERENCE_QUANTILES, method="lower"))
    low = values.min()
    return tuple(float(cut) for cut in cuts if cut > low)


def present_values(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column's present values as float64 (nulls and NaN dropped)."""
    values = pc.drop_null(column).to_numpy().astype(np.float64, copy=False)
    nan = np.isnan(values)
    return values[~nan] if nan.any() else values


def bin_counts(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """How many values fall in each bin: below the first edge, then from each edge (included) to the next, then
    from the last edge up. One comparison per edge: far quicker than locating each value."""
    below = [int(np.count_nonzero(values < edge)) for edge in edges]
    return np.diff(np.asarray([0, *below, len(values)], dtype=np.int64))


def _shares(counts: np.ndarray, total: int | None = None) -> tuple[float, ...]:
    total = int(counts.sum()) if total is None else total
    return tuple(round(float(count) / total, 8) if total else 0.0 for count in counts)


def min_max(column: pa.ChunkedArray) -> tuple[float | None, float | None]:
    """Smallest and largest present value of a float column (None, None when every value is missing).

    Computed by numpy: pyarrow's min/max kernels are far slower on float columns
    (benchmarks/RESULTS.md). Nulls become NaN on the way, which the NaN-aware reductions skip.
    """
    if column.null_count == len(column):
        return None, None
    values = column.to_numpy()
    if column.null_count:
        return float(np.nanmin(values)), float(np.nanmax(values))
    return float(values.min()), float(values.max())


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
