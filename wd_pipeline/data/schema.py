"""What ingest decided about each column: its role for the model and the Arrow type it was read as.

The schema is written into the split manifest, so training and serving read the same
decisions ingest took instead of inferring them again from a split (where, say, a column
might be all-missing by chance).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.StrEnum):
    """How the model takes a column: as a number, or as a category (one value among a vocabulary)."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column: its name, its role, and its Arrow type as read from the source."""

    name: str
    role: Role
    source_type: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "role": str(self.role), "source_type": self.source_type}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnSpec:
        return cls(name=str(raw["name"]), role=Role(raw["role"]), source_type=str(raw["source_type"]))


@dataclass(frozen=True)
class TableSchema:
    """The label, the model's feature columns in the order the splits hold them, and the carried columns.

    Carried columns (``--slice-by``, ``--group-column``) travel in the splits beside the
    features so evaluation can slice and group rows by them, but the model never takes them.
    """

    label: str
    columns: tuple[ColumnSpec, ...]
    carried: tuple[ColumnSpec, ...] = ()

    def names(self) -> list[str]:
        """The feature columns only: what the model takes."""
        return [column.name for column in self.columns]

    def carried_names(self) -> list[str]:
        return [column.name for column in self.carried]

    def numeric(self) -> list[str]:
        return [column.name for column in self.columns if column.role is Role.NUMERIC]

    def categorical(self) -> list[str]:
        return [column.name for column in self.columns if column.role is Role.CATEGORICAL]

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Carried columns appear only when there are some, so a schema without them reads as it always did."""
        raw: dict[str, Any] = {"label": self.label, "columns": [column.to_dict() for column in self.columns]}
        if self.carried:
            raw["carried"] = [column.to_dict() for column in self.carried]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TableSchema:
        return cls(
            label=str(raw["label"]),
            columns=tuple(ColumnSpec.from_dict(item) for item in raw["columns"]),
            carried=tuple(ColumnSpec.from_dict(item) for item in raw.get("carried", ())),
        )


@dataclass(frozen=True)
class DroppedColumn:
    """A column of the source that is not in the splits, and why (shown in the manifest)."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DroppedColumn:
        return cls(name=str(raw["name"]), reason=str(raw["reason"]))
