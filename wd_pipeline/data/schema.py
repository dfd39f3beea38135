"""PROVISIONAL (lead's stand-in until the data branch lands): the table's feature columns and their roles."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    role: Role
    source_type: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": str(self.role), "source_type": self.source_type}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnSpec:
        return cls(raw["name"], Role(raw["role"]), raw.get("source_type", ""))


@dataclass(frozen=True)
class TableSchema:
    label: str
    columns: tuple[ColumnSpec, ...]

    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def numeric(self) -> list[str]:
        return [column.name for column in self.columns if column.role is Role.NUMERIC]

    def categorical(self) -> list[str]:
        return [column.name for column in self.columns if column.role is Role.CATEGORICAL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "columns": [{"name": c.name, "role": str(c.role), "source_type": c.source_type} for c in self.columns],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TableSchema:
        return cls(
            raw["label"],
            tuple(ColumnSpec(c["name"], Role(c["role"]), c["source_type"]) for c in raw["columns"]),
        )
