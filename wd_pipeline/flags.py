"""Command-line flags generated from a settings model, so a flag is never declared twice.

Each field becomes ``--field-name`` with the field's description as its help, its default
shown, and a metavar that says what to type: the choices of a ``Literal``, ``,...`` after a
list (typed comma-separated). argparse keeps every value as text, so a flag that was not
given stays None and cannot hide a config file's value; :func:`parse_flags` then turns the
given ones into Python values and leaves the constraints to the model, whose messages name
the field. For an optional field an empty value means none.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from wd_pipeline.errors import ConfigError

Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Flag:
    """One generated flag: how it is spelled, which field it fills and how its text is read."""

    flag: str
    field: str
    parse: Parser
    kind: str  # what a valid value is, for the message when one does not parse
    example: str | None  # a valid value (the default), for the same message
    optional: bool

    def value(self, raw: str) -> Any:
        if self.optional and not raw.strip():
            return None
        try:
            return self.parse(raw)
        except ValueError:
            example = f", e.g. {self.flag} {self.example}" if self.example else ""
            raise ConfigError(f"{self.flag} {raw!r} is not valid: give {self.kind}{example}") from None


def model_flags(
    model: type[BaseModel],
    *,
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
    parsers: Mapping[str, Parser] | None = None,
) -> list[Flag]:
    """The flags of ``model``'s fields (all, or ``only`` these), in field order.

    ``parsers`` replaces the generic reading of a field's text where a setting has its own
    (the λ grid, whose messages speak of λ values).
    """
    flags = []
    for name, field in model.model_fields.items():
        if name in exclude or (only is not None and name not in only):
            continue
        inner, optional = _unwrap_optional(field.annotation)
        parse, kind = _reader(inner)
        flags.append(
            Flag(
                flag="--" + name.replace("_", "-"),
                field=name,
                parse=(parsers or {}).get(name, parse),
                kind=kind,
                example=_shown_default(field),
                optional=optional,
            )
        )
    return flags


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], flags: Iterable[Flag]) -> None:
    """Add ``flags`` to ``parser``; a field without a default becomes a required flag."""
    for flag in flags:
        field = model.model_fields[flag.field]
        help_text = field.description or ""
        shown = _shown_default(field)
        if shown is not None:
            help_text += f" (default: {shown})"
        parser.add_argument(
            flag.flag,
            dest=flag.field,
            metavar=_metavar(flag.field, field.annotation),
            default=None,
            required=field.is_required(),
            help=help_text.replace("%", "%%"),  # argparse formats help with %
        )


def parse_flags(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The values of the flags given on the command line; one that does not parse is a ConfigError."""
    values = {}
    for flag in flags:
        raw = getattr(args, flag.field)
        if raw is not None:
            values[flag.field] = flag.value(raw)
    return values


def _strip_annotated(kind: Any) -> Any:
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    return kind


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    kind = _strip_annotated(kind)
    if get_origin(kind) in (Union, types.UnionType):
        members = [member for member in get_args(kind) if member is not type(None)]
        if len(members) == 1:
            return _strip_annotated(members[0]), len(members) < len(get_args(kind))
    return kind, False


def _item_reader(kind: Any) -> tuple[Parser, str, str]:
    """(parser, what one value is, what several are) of a scalar type."""
    if kind is int:
        return int, "a whole number", "whole numbers"
    if kind is float:
        return float, "a number", "numbers"
    return str, "a value", "values"  # text, paths and choices: the model checks them


def _reader(kind: Any) -> tuple[Parser, str]:
    """(parser, what a valid value is) of a field's type; a list is typed comma-separated."""
    if get_origin(kind) is not list:
        parse, one, _ = _item_reader(kind)
        return parse, one
    item, _, several = _item_reader(_strip_annotated(get_args(kind)[0]))

    def parse_list(text: str) -> list[Any]:
        return [item(part.strip()) for part in text.split(",") if part.strip()]

    return parse_list, f"{several} separated by commas"


def _metavar(name: str, annotation: Any) -> str:
    kind, _ = _unwrap_optional(annotation)
    is_list = get_origin(kind) is list
    if is_list:
        kind = _strip_annotated(get_args(kind)[0])
    shown = "{" + ",".join(map(str, get_args(kind))) + "}" if get_origin(kind) is Literal else name.upper()
    return f"{shown},..." if is_list else shown


def _shown_default(field: FieldInfo) -> str | None:
    if field.is_required():
        return None
    return _show(field.get_default(call_default_factory=True))


def _show(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(str(_show(item)) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
