"""How far new data has moved from a model's training data: a population stability index per column.

The reference is the training split's profile (:class:`~wd_pipeline.data.profile.ColumnReference`
per column, and the positive rate). New data is counted in the reference's own buckets, so
both sides share one set of bins:

- numeric: the reference's decile bins, plus a bucket for missing values;
- categorical: the reference's categories, an ``(unseen)`` bucket for every other value
  (categories training never saw, and the rare ones a capped reference pooled into its
  ``other`` share), and a ``(missing)`` bucket;
- the label, when the new data has it: positives and negatives, so a changed positive rate
  shows up like any other column.

PSI = Σ (actual − expected) · ln(actual / expected) over the buckets, with shares of all rows.
An empty bucket would make it infinite, so every share below :data:`SMOOTHING` counts as
:data:`SMOOTHING` on both sides (a bucket empty on both sides adds nothing). Pure: no I/O,
no tracking; callers record the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wd_pipeline.data.profile import ColumnReference, SplitProfile, bin_counts, present_values
from wd_pipeline.data.schema import Role

OK, WARN, ALERT = "ok", "warn", "alert"
LEVELS = (OK, WARN, ALERT)
SMOOTHING = 1e-4  # the share an empty bucket counts as (0.01 % of rows)
MISSING, UNSEEN = "(missing)", "(unseen)"
LABEL_ROLE = "label"
CONTRIBUTORS = 3  # buckets named per column, largest contribution first
NEGLIGIBLE = 1e-9  # a term below this is rounding, not a contribution


@dataclass(frozen=True)
class Contribution:
    """One bucket of one column: its share of rows in the reference and now, and its term of the PSI."""

    bucket: str
    expected: float
    actual: float
    psi: float

    def describe(self) -> str:
        return f"{self.bucket} {100 * self.expected:.1f} % → {100 * self.actual:.1f} %"


@dataclass(frozen=True)
class ColumnDrift:
    """The PSI of one column, its level, and the buckets that contribute most to it."""

    column: str
    role: str  # numeric, categorical or label
    psi: float
    level: str
    contributors: tuple[Contribution, ...]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnDrift:
        return cls(
            column=str(raw["column"]),
            role=str(raw["role"]),
            psi=float(raw["psi"]),
            level=str(raw["level"]),
            contributors=tuple(Contribution(**item) for item in raw["contributors"]),
        )


@dataclass(frozen=True)
class DriftReport:
    """Every compared column (largest PSI first), the thresholds that set the levels, and what was not compared."""

    reference: str  # whose training data, e.g. "adult v3"
    reference_rows: int
    current_rows: int
    warn: float
    alert: float
    columns: tuple[ColumnDrift, ...]
    reference_positive_rate: float | None = None
    current_positive_rate: float | None = None
    skipped: tuple[str, ...] = ()  # columns on one side only, or with another role: no PSI

    @property
    def worst(self) -> ColumnDrift | None:
        return self.columns[0] if self.columns else None

    @property
    def max_psi(self) -> float:
        return self.columns[0].psi if self.columns else 0.0

    @property
    def level(self) -> str:
        return self.columns[0].level if self.columns else OK

    @property
    def drifted(self) -> tuple[str, ...]:
        """Columns at warn or alert, largest PSI first."""
        return tuple(column.column for column in self.columns if column.level != OK)

    @property
    def alerts(self) -> tuple[str, ...]:
        return tuple(column.column for column in self.columns if column.level == ALERT)

    def summary(self) -> str:
        """One line: the level, the largest PSI, and the drifted columns with theirs."""
        if not self.drifted:
            return f"no column drifted against {self.reference}'s training data (max PSI {self.max_psi:.3f})"
        named = ", ".join(f"{c.column} {c.psi:.3f} ({c.level})" for c in self.columns if c.level != OK)
        return f"{len(self.drifted)} column(s) drifted against {self.reference}'s training data: {named}"

    def rows(self) -> list[dict[str, Any]]:
        """One row per column, for a table a person reads (Prefect, markdown)."""
        return [
            {
                "column": column.column,
                "role": column.role,
                "psi": round(column.psi, 4),
                "level": column.level,
                "largest contributions": "; ".join(item.describe() for item in column.contributors),
            }
            for column in self.columns
        ]

    def metrics(self) -> dict[str, float]:
        """``drift.psi.<column>`` per column, ``drift.max_psi``, and the positive rates when the label was there."""
        values = {f"drift.psi.{column.column}": column.psi for column in self.columns}
        values["drift.max_psi"] = self.max_psi
        if self.current_positive_rate is not None:
            values["drift.positive_rate"] = self.current_positive_rate
        if self.reference_positive_rate is not None:
            values["drift.reference_positive_rate"] = self.reference_positive_rate
        return values

    def tags(self) -> dict[str, str]:
        return {"drift.level": self.level, "drift.columns": ",".join(self.drifted), "drift.reference": self.reference}

    def markdown(self) -> str:
        lines = [
            f"# Drift against {self.reference}'s training data",
            "",
            f"{self.summary()}.",
            "",
            f"Population stability index per column: {self.reference_rows:,} training rows vs "
            f"{self.current_rows:,} rows now; warn from {self.warn:g}, alert from {self.alert:g}.",
        ]
        if self.reference_positive_rate is not None and self.current_positive_rate is not None:
            lines.append(
                f"Positive rate: {self.reference_positive_rate:.4f} at training time, {self.current_positive_rate:.4f} now."
            )
        if self.skipped:
            lines.append(f"Not compared (on one side only, or another role): {', '.join(self.skipped)}.")
        return "\n".join([*lines, "", markdown_table(self.rows()), ""])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "level": self.level, "max_psi": self.max_psi, "drifted": list(self.drifted)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DriftReport:
        return cls(
            reference=str(raw["reference"]),
            reference_rows=int(raw["reference_rows"]),
            current_rows=int(raw["current_rows"]),
            warn=float(raw["warn"]),
            alert=float(raw["alert"]),
            columns=tuple(ColumnDrift.from_dict(item) for item in raw["columns"]),
            reference_positive_rate=raw.get("reference_positive_rate"),
            current_positive_rate=raw.get("current_positive_rate"),
            skipped=tuple(raw.get("skipped", ())),
        )


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "_(no columns compared)_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[key]).replace("|", "\\|") for key in headers) + " |" for row in rows]
    return "\n".join(lines)


def level_of(psi: float, warn: float, alert: float) -> str:
    if psi >= alert:
        return ALERT
    return WARN if psi >= warn else OK


def psi_terms(expected: Sequence[float], actual: Sequence[float]) -> np.ndarray:
    """Each bucket's term (a − e) · ln(a / e), shares floored at :data:`SMOOTHING`."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), SMOOTHING)
    a = np.maximum(np.asarray(actual, dtype=np.float64), SMOOTHING)
    return (a - e) * np.log(a / e)


def compare(
    reference: SplitProfile,
    current: pa.Table,
    *,
    warn: float,
    alert: float,
    reference_name: str,
    label: str | None = None,
    current_label: np.ndarray | None = None,
) -> DriftReport:
    """PSI of every column the reference and ``current`` share with one role, and of the label when both
    sides know its positive rate (``current_label``: the 0/1 labels of the rows that have one).

    ``current`` holds columns as ingest conforms them: numbers as floats or integers with
    nulls for gaps, categories as text (or dictionary-encoded text).
    """
    counts = DriftCounts(reference, current.schema)
    counts.add(current, current_label)
    return counts.report(warn=warn, alert=alert, reference_name=reference_name, label=label)


class DriftCounts:
    """Rows counted into the reference's buckets batch by batch, so a file of any size is compared in
    bounded memory; :meth:`report` gives what :func:`compare` gives for all the batches as one table.

    Every batch has ``schema``: whether a column is compared at all is decided from its type once.
    """

    def __init__(self, reference: SplitProfile, schema: pa.Schema) -> None:
        self.reference = reference
        self.names = list(schema.names)
        self.rows = 0
        self.labels = 0
        self.positives = 0
        self.compared: dict[str, ColumnReference] = {}
        self.roles: dict[str, Role] = {}
        self.skipped: list[str] = []
        for profile in reference.columns:
            kind = schema.field(profile.name).type if profile.name in self.names else None
            if profile.reference is None or kind is None or not _fits(kind, profile.role):
                self.skipped.append(profile.name)
                continue
            self.compared[profile.name] = profile.reference
            self.roles[profile.name] = profile.role
        self.missing = dict.fromkeys(self.compared, 0)
        self.bins = {
            name: np.zeros(len(ref.edges) + 1, dtype=np.int64)
            for name, ref in self.compared.items()
            if self.roles[name] is Role.NUMERIC
        }
        self.categories: dict[str, dict[str, int]] = {
            name: {} for name in self.compared if self.roles[name] is not Role.NUMERIC
        }

    def add(self, batch: pa.Table, label: np.ndarray | None = None) -> None:
        """Count one batch; ``label``: the 0/1 labels of its rows that have one (None when the file has no label)."""
        self.rows += batch.num_rows
        if label is not None:
            self.count_labels(label)
        for name, reference in self.compared.items():
            column = batch.column(name)
            if name in self.bins:
                values = present_values(column)
                self.bins[name] += bin_counts(values, reference.edges)
                self.missing[name] += len(column) - len(values)  # NaN counts as missing, as ingest makes it
            else:
                self.missing[name] += column.null_count
                seen = self.categories[name]
                for value, count in _category_counts(column).items():
                    seen[value] = seen.get(value, 0) + count

    def count_labels(self, label: np.ndarray) -> None:
        """Count 0/1 labels of rows that have one (a file may carry them apart from its batches)."""
        self.labels += len(label)
        self.positives += int(np.sum(label))

    def report(self, *, warn: float, alert: float, reference_name: str, label: str | None = None) -> DriftReport:
        drifts = []
        skipped = list(self.skipped)
        for name, reference in self.compared.items():
            if not self.rows:
                skipped.append(name)
                continue
            drifts.append(
                _column_drift(name, str(self.roles[name]), *self._buckets(name, reference), warn=warn, alert=alert)
            )
        known = {profile.name for profile in self.reference.columns}
        skipped += [name for name in self.names if name not in known]
        current_rate = self.positives / self.labels if self.labels else None
        if self.reference.positive_rate is not None and current_rate is not None:
            before = self.reference.positive_rate
            rates = ([1 - before, before], [1 - current_rate, current_rate])
            drifts.append(_column_drift(label or "label", LABEL_ROLE, ["0", "1"], *rates, warn=warn, alert=alert))
        return DriftReport(
            reference=reference_name,
            reference_rows=self.reference.rows,
            current_rows=self.rows,
            warn=warn,
            alert=alert,
            columns=tuple(sorted(drifts, key=lambda drift: -drift.psi)),
            reference_positive_rate=self.reference.positive_rate,
            current_positive_rate=current_rate,
            skipped=tuple(skipped),
        )

    def _buckets(self, name: str, reference: ColumnReference) -> tuple[list[str], list[float], list[float]]:
        """(bucket names, expected shares, actual shares) over all rows counted."""
        rows = self.rows
        present_before = 1.0 - reference.missing
        if name in self.bins:
            names = _bin_names(reference.edges)
            expected = [share * present_before for share in reference.shares]
            actual = [int(count) / rows for count in self.bins[name]]
        else:
            counts = self.categories[name]
            listed = set(reference.categories)
            names = [*reference.categories, UNSEEN]
            expected = [share * present_before for share in (*reference.shares, reference.other)]
            unseen = sum(count for value, count in counts.items() if value not in listed)
            actual = [counts.get(value, 0) / rows for value in reference.categories] + [unseen / rows]
        return [*names, MISSING], [*expected, reference.missing], [*actual, self.missing[name] / rows]


def _column_drift(
    name: str,
    role: str,
    buckets: Sequence[str],
    expected: Sequence[float],
    actual: Sequence[float],
    *,
    warn: float,
    alert: float,
) -> ColumnDrift:
    terms = psi_terms(expected, actual)
    psi = float(terms.sum())
    largest = [index for index in np.argsort(-terms, kind="stable")[:CONTRIBUTORS] if terms[index] > NEGLIGIBLE]
    contributors = tuple(
        Contribution(
            buckets[index], round(float(expected[index]), 6), round(float(actual[index]), 6), float(terms[index])
        )
        for index in largest
    )
    return ColumnDrift(name, role, psi, level_of(psi, warn, alert), contributors)


def _fits(kind: pa.DataType, role: Role) -> bool:
    """Whether a column of this type can be counted in the buckets of a reference with this role."""
    return role is not Role.NUMERIC or pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _category_counts(column: pa.ChunkedArray) -> dict[str, int]:
    text = pc.cast(column, pa.string()) if not pa.types.is_dictionary(column.type) else column
    counts = pc.value_counts(text)
    values, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return {str(value): int(count) for value, count in zip(values, numbers, strict=True) if value is not None}


def _bin_names(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all values"]
    inner = [f"[{_edge(low)}, {_edge(high)})" for low, high in pairwise(edges)]
    return [f"< {_edge(edges[0])}", *inner, f"≥ {_edge(edges[-1])}"]


def _edge(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
