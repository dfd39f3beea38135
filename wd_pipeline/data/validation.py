"""Does a table fit the run's settings, and in what form do its columns reach the model.

Each feature column gets a role from its Arrow type (numbers and booleans are numeric,
text and dictionaries categorical; ``--categorical`` overrides), missing values become
nulls whatever the source wrote for them, and columns the model cannot learn from are
refused with the reason (empty, an identifier, numbers mixed with text, too many
categories) or, when constant, dropped. Validation runs on the Arrow table with
``pyarrow.compute``: a pandas round trip of the features cost more than the read itself on
a large file.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wd_pipeline.config import PipelineConfig
from wd_pipeline.data.groups import group_codes
from wd_pipeline.data.profile import min_max
from wd_pipeline.data.schema import ColumnSpec, DroppedColumn, Role, TableSchema
from wd_pipeline.data.sources import missing_tokens
from wd_pipeline.errors import DataError

log = logging.getLogger(__name__)

TRUE_NAMES = {"1", "true"}
# A text column looks like an identifier when nearly every value is distinct: at least this
# share of its present values, and at least ID_MIN_DISTINCT of them (small tables repeat little).
ID_DISTINCT_SHARE = 0.9
ID_MIN_DISTINCT = 20
# A text column mixes numbers and text when most of its values, but not all, read as numbers.
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
MAX_MISSING_LABEL_SHARE = 0.5

RowLocator = Callable[[int], str]


@dataclass(frozen=True)
class CheckedTable:
    """A validated source still in Arrow, row for row: the feature columns as the model takes them, the 0/1 label.

    ``features`` holds the schema's columns in order: numeric ones as float (null where
    missing), categorical ones as dictionary-encoded text (null where missing), so that
    splitting moves small integer codes rather than strings. ``carried`` holds the schema's
    carried columns in the same form (a table without columns when there are none).
    """

    features: pa.Table
    label: np.ndarray
    schema: TableSchema
    dropped_label_rows: int = 0
    dropped_columns: tuple[DroppedColumn, ...] = ()
    carried: pa.Table = field(default_factory=lambda: pa.table({}))

    def class_counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        return class_counts(self.label if rows is None else self.label[rows])


@dataclass(frozen=True)
class LabelledRows:
    """What the label check decided: the feature columns, the carried columns, the roles of both, the 0/1
    label of the rows that have one, and those rows' numbers in the source (None when every row has a label)."""

    features: tuple[str, ...]
    roles: dict[str, Role]
    label: np.ndarray
    kept: np.ndarray | None
    carried: tuple[str, ...] = ()
    groups: np.ndarray | None = None  # each labelled row's group (0…k-1) with --group-column


def class_counts(label: np.ndarray) -> dict[str, int]:
    positives = int(label.sum())
    return {"0": len(label) - positives, "1": positives}


def validate(
    table: pa.Table, config: PipelineConfig, *, where: RowLocator | None = None, declared: pa.Schema | None = None
) -> CheckedTable:
    """Check the table against the settings; returns the model's columns and the 0/1 label.

    ``where`` turns a row number of ``table`` into words for a message (the file and row a
    user can open); by default ``row N``, counted from 1. ``declared`` gives the source
    types the schema records, when the table was read with other ones (text read
    dictionary-encoded); by default the table's. The work is done in two steps,
    :func:`check_label` and :func:`check_features`, so that a caller can split the rows
    (which needs only the label) while the feature columns are checked.
    """
    return check_features(table, config, check_label(table, config), where=where, declared=declared)


def check_label(table: pa.Table, config: PipelineConfig) -> LabelledRows:
    """Everything decided from the header and the label: names, roles, the 0/1 label, enough rows per class."""
    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"data has duplicate columns {duplicates}: give every column a unique name")
    if table.num_rows == 0:
        raise DataError("data holds a header but no rows: pass a file with data rows under the header")
    if config.label not in names:
        raise DataError(
            f"label column {config.label!r} not found; columns are {_preview(names)}.{_did_you_mean(config.label, names)} "
            "Pass --label with the name of the binary target column"
        )
    _check_named_columns(names, config)
    carried = carried_columns(config)
    features = _feature_columns(names, config, carried)
    roles = infer_roles(table.schema, [*features, *carried], config.categorical or ())
    label, kept = _label(table.column(config.label), config)
    _check_class_sizes(class_counts(label), config)
    groups = None
    if config.group_column:
        groups = _group_codes(table, config, roles[config.group_column], kept)
    return LabelledRows(tuple(features), roles, label, kept, carried=carried, groups=groups)


def _group_codes(table: pa.Table, config: PipelineConfig, role: Role, kept: np.ndarray | None) -> np.ndarray:
    """The group of each labelled row, with missing values read as for a feature of the same role."""
    name = str(config.group_column)
    column = table.select([name]) if kept is None else table.select([name]).take(kept)
    spec = ColumnSpec(name, role, str(table.schema.field(name).type))
    return group_codes(_conform(column, TableSchema(config.label, (spec,)), config.na_values, encode=False)[0], name)


def carried_columns(config: PipelineConfig) -> tuple[str, ...]:
    """The columns the splits carry beside the features: every ``--slice-by`` column, then ``--group-column``."""
    named = [*(config.slice_by or ()), *([config.group_column] if config.group_column else [])]
    return tuple(dict.fromkeys(named))


def check_features(
    table: pa.Table,
    config: PipelineConfig,
    labelled: LabelledRows,
    *,
    where: RowLocator | None = None,
    declared: pa.Schema | None = None,
) -> CheckedTable:
    """The feature columns of the labelled rows, in the model's form, or the reason they cannot be used."""
    where = where or (lambda row: f"row {row + 1}")
    declared = declared or table.schema
    kept = labelled.kept
    rows = table.num_rows
    table = table.select([*labelled.features, *labelled.carried])
    if kept is not None:
        table = table.take(kept)

    def specs(names: Sequence[str]) -> tuple[ColumnSpec, ...]:
        return tuple(ColumnSpec(name, labelled.roles[name], str(declared.field(name).type)) for name in names)

    carried = specs(labelled.carried)
    schema = TableSchema(config.label, specs(labelled.features))
    columns = _conform(table, schema, config.na_values, encode=True)
    facts = {spec.name: _facts(columns.column(spec.name), spec.role) for spec in schema.columns}
    _check_finite(facts)
    _check_not_empty(facts)
    forced = set(config.categorical or ())
    _check_mixed(columns, facts, forced, lambda row: where(int(kept[row]) if kept is not None else row))
    _check_identifiers(facts, forced)
    _check_vocabulary(facts, config.max_categories)
    constant = [spec.name for spec in schema.columns if facts[spec.name].constant]
    if constant:
        log.warning(
            "dropped constant column%s %s: one value on every row, nothing to learn from",
            "s" if len(constant) > 1 else "",
            _preview(constant),
        )
    kept_columns = tuple(spec for spec in schema.columns if spec.name not in constant)
    if not kept_columns:
        raise DataError("data has no feature columns besides the label that vary: every one is constant")
    schema = TableSchema(config.label, kept_columns, carried)
    excluded = [name for name in config.exclude or () if name not in labelled.carried]
    dropped = tuple(DroppedColumn(name, "excluded (--exclude)") for name in excluded) + tuple(
        DroppedColumn(name, "constant") for name in constant
    )
    return CheckedTable(
        columns.select(schema.names()),
        labelled.label,
        schema,
        dropped_label_rows=0 if kept is None else rows - len(kept),
        dropped_columns=dropped,
        carried=_conform(table, TableSchema(config.label, carried), config.na_values, encode=True),
    )


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6) or [
        other for other in names if other.lower() == name.lower()
    ]
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_named_columns(names: list[str], config: PipelineConfig) -> None:
    """``--categorical`` and ``--exclude`` name columns of the data, not the label, and not the same ones."""
    for flag, listed in (("--categorical", config.categorical), ("--exclude", config.exclude)):
        unknown = [name for name in listed or () if name not in names]
        if unknown:
            what = f"column {unknown[0]!r} that is" if len(unknown) == 1 else f"columns {unknown} that are"
            raise DataError(
                f"{flag} names {what} not in the data; columns are {_preview(names)}."
                f"{_did_you_mean(unknown[0], names)} Pass {flag} with names of the header"
            )
        if config.label in (listed or ()):
            raise DataError(f"{flag} names the label column {config.label!r}: remove it from {flag}")
    for flag, listed in (("--slice-by", config.slice_by), ("--group-column", [config.group_column])):
        unknown = [name for name in listed or () if name is not None and name not in names]
        if unknown:
            raise DataError(
                f"{flag} names column {unknown[0]!r} that is not in the data; columns are {_preview(names)}."
                f"{_did_you_mean(unknown[0], names)} Pass {flag} with a column of the header"
            )
    for flag, listed in (("--categorical", config.categorical), ("--features", config.features)):
        both = [name for name in listed or () if name in (config.exclude or ())]
        if both:
            raise DataError(f"columns {both} are in both {flag} and --exclude: keep each in one of them")


def _feature_columns(names: list[str], config: PipelineConfig, carried: Sequence[str] = ()) -> list[str]:
    """The columns the model takes: ``--features`` (or every column but the label), less the excluded and carried ones."""
    if config.features is None:
        features = [name for name in names if name != config.label]
    else:
        missing = [name for name in config.features if name not in names]
        if missing:
            raise DataError(f"feature columns {missing} not found; columns are {_preview(names)}")
        if config.label in config.features:
            raise DataError(f"label column {config.label!r} is also listed as a feature: remove it from features")
        features = list(config.features)
    excluded = {*(config.exclude or ()), *carried}
    features = [name for name in features if name not in excluded]
    if not features:
        raise DataError("data has no feature columns besides the label")
    return features


def role_of(kind: pa.DataType) -> Role | None:
    """The role a column of this Arrow type takes by default; None for types the model cannot take."""
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean, pa.types.is_null)
    if any(check(kind) for check in numeric):
        return Role.NUMERIC
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return Role.CATEGORICAL
    return None


def infer_roles(schema: pa.Schema, features: Sequence[str], categorical: Sequence[str] = ()) -> dict[str, Role]:
    """Each feature's role: from its Arrow type, or categorical when named in ``categorical``.

    Dates and times, binary and nested columns are refused, naming them: a date is neither a
    quantity nor a category the model could meet again. Named as categorical, a date or time
    column is taken as its text.
    """
    forced = set(categorical)
    roles: dict[str, Role] = {}
    temporal, other = [], []
    for name in features:
        kind = schema.field(name).type
        role = role_of(kind)
        if name in forced and (role is not None or pa.types.is_temporal(kind)):
            role = Role.CATEGORICAL
        if role is not None:
            roles[name] = role
        elif pa.types.is_temporal(kind) or pa.types.is_interval(kind):
            temporal.append(name)
        else:
            other.append(name)
    shown = [f"{name} ({schema.field(name).type})" for name in temporal + other]
    if temporal:
        raise DataError(
            f"date/time columns {_preview(shown[: len(temporal)])} cannot be model inputs: leave them out with "
            f"--exclude {','.join(temporal)} (or derive numeric columns from them first)"
        )
    if other:
        raise DataError(
            f"columns {_preview(shown)} have types the model cannot take (it takes numbers, booleans and text): "
            f"leave them out with --exclude {','.join(other)}"
        )
    return roles


def conform(table: pa.Table, schema: TableSchema, na_values: Sequence[str] | None = None) -> pa.Table:
    """The schema's columns of ``table``, in order, as the model takes them.

    Numeric: floats keep their width (a float32 source stays half the size through split and
    write), NaN becomes null; integers, booleans (0/1) and decimals become float64
    (``safe=False`` rounds an int64 beyond 2**53 instead of refusing it). Categorical:
    ``pa.string()``, with every missing token (:func:`~wd_pipeline.data.sources.missing_tokens`)
    as null; numbers named categorical are cast to their text (5 → "5"). Values the user
    declared missing that read as numbers (``--na-values -999``) are null in numeric columns too.
    """
    return _conform(table, schema, na_values, encode=False)


def _conform(table: pa.Table, schema: TableSchema, na_values: Sequence[str] | None, *, encode: bool) -> pa.Table:
    """:func:`conform`; with ``encode`` the categorical columns come dictionary-encoded."""
    tokens = missing_tokens(na_values)
    numbers = _numeric_tokens(na_values or ())
    columns = []
    for spec in schema.columns:
        column = table.column(spec.name)
        if spec.role is Role.NUMERIC:
            columns.append(_as_numeric(column, numbers))
        else:
            columns.append(_as_categorical(column, tokens, encode=encode))
    return pa.table(columns, names=schema.names())


def _numeric_tokens(na_values: Sequence[str]) -> list[float]:
    found = []
    for value in na_values:
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            found.append(number)
    return found


def _as_numeric(column: pa.ChunkedArray, missing: list[float]) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_floating(kind):
        if kind == pa.float16():
            column = column.cast(pa.float32())
        column = _null_where(column, pc.is_nan(column))
    else:
        column = pc.cast(column, pa.float64(), safe=False)
    if missing:
        column = _null_where(column, pc.is_in(column, value_set=pa.array(missing, column.type)))
    return column


def _as_categorical(column: pa.ChunkedArray, tokens: Sequence[str], *, encode: bool) -> pa.ChunkedArray:
    """Text with the missing tokens as nulls; dictionary-encoded when ``encode``.

    Encoded, the tokens are looked for among the distinct values only, and the text is
    compared row by row only when one of them occurs.
    """
    if pa.types.is_dictionary(column.type) and not pa.types.is_string(column.type.value_type):
        column = pc.cast(column, column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type)):
        column = pc.cast(column, pa.string())
    value_set = pa.array(tokens, pa.string())
    if encode:
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        if not any(pc.any(pc.is_in(chunk.dictionary, value_set=value_set)).as_py() for chunk in encoded.chunks):
            return encoded.cast(pa.dictionary(pa.int32(), pa.string()))
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, pa.string())
    column = _null_where(column, pc.is_in(column, value_set=value_set))
    return pc.dictionary_encode(column) if encode else column


def _null_where(column: pa.ChunkedArray, mask: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pc.any(mask).as_py():
        return column
    return pc.if_else(mask, pa.scalar(None, column.type), column)


@dataclass(frozen=True)
class _Facts:
    """What the checks need to know about one conformed column."""

    role: Role
    rows: int
    missing: int
    constant: bool
    infinite: int = 0
    values: pa.StructArray | None = None  # categorical: distinct present values and their counts

    @property
    def distinct(self) -> int:
        return 0 if self.values is None else len(self.values)


def _facts(column: pa.ChunkedArray, role: Role) -> _Facts:
    missing = column.null_count
    present = len(column) - missing
    if role is Role.NUMERIC:
        low, high = min_max(column)
        infinite = 0
        if low is not None and (math.isinf(low) or math.isinf(high)):
            infinite = int(pc.sum(pc.is_inf(column)).as_py())
        return _Facts(role, len(column), missing, present > 0 and missing == 0 and low == high, infinite)
    counts = pc.value_counts(column)
    counts = counts.filter(counts.field("values").is_valid())
    values = pa.StructArray.from_arrays(
        [pc.cast(counts.field("values"), pa.string()), counts.field("counts")], names=["values", "counts"]
    )
    return _Facts(role, len(column), missing, missing == 0 and len(values) == 1, values=values)


def _check_finite(facts: dict[str, _Facts]) -> None:
    infinite = {name: fact.infinite for name, fact in facts.items() if fact.infinite}
    if infinite:
        raise DataError(
            f"features hold infinite values (column: count) {infinite}: replace them with numbers, "
            "or leave those cells empty to mark them missing"
        )


def _check_not_empty(facts: dict[str, _Facts]) -> None:
    empty = [name for name, fact in facts.items() if fact.missing == fact.rows]
    if empty:
        what = f"column {empty[0]!r} is" if len(empty) == 1 else f"columns {_preview(empty)} are"
        raise DataError(
            f"{what} empty (every value missing): leave {_them(empty)} out with --exclude {','.join(empty)}"
        )


def _check_mixed(columns: pa.Table, facts: dict[str, _Facts], forced: set[str], where: RowLocator) -> None:
    """A text column whose values are mostly numbers: a typo or an unknown-value marker made it text."""
    for name, fact in facts.items():
        if fact.values is None or name in forced:
            continue
        values, counts = fact.values.field("values"), fact.values.field("counts")
        numeric = pc.match_substring_regex(values, NUMBER_PATTERN)
        numbers = int(pc.sum(counts.filter(numeric)).as_py() or 0)
        present = fact.rows - fact.missing
        if numbers == present or numbers * 2 <= present:
            continue
        text = fact.values.filter(pc.invert(numeric))
        example = text.field("values")[int(pc.index(text.field("counts"), pc.max(text.field("counts"))).as_py())]
        row = int(pc.index(pc.cast(columns.column(name), pa.string()), example).as_py())
        raise DataError(
            f"column {name!r} mixes numbers and text: {numbers} of its {present} values are numbers, "
            f"but {where(row)} holds {example.as_py()!r}. Declare such values missing with --na-values "
            f"{_quoted(example.as_py())}, or take the column as categorical with --categorical {name}"
        )


def _check_identifiers(facts: dict[str, _Facts], forced: set[str]) -> None:
    for name, fact in facts.items():
        if fact.values is None or name in forced:
            continue
        present = fact.rows - fact.missing
        if fact.distinct >= max(ID_MIN_DISTINCT, ID_DISTINCT_SHARE * present):
            raise DataError(
                f"column {name!r} looks like an identifier ({fact.distinct} distinct values in {present} rows): "
                f"leave it out with --exclude {name}, or pass --categorical {name} if it is a category"
            )


def _check_vocabulary(facts: dict[str, _Facts], cap: int) -> None:
    large = {name: fact.distinct for name, fact in facts.items() if fact.distinct > cap}
    if large:
        names = ",".join(large)
        raise DataError(
            f"categorical columns have more distinct values than --max-categories {cap} (column: count) {large}: "
            f"raise --max-categories, or leave {_them(list(large))} out with --exclude {names}"
        )


def _them(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


def _quoted(value: str) -> str:
    """``value`` as typed in a shell: quoted when it holds anything but letters, digits and ``._-/``."""
    if value and all(char.isalnum() or char in "._-/" for char in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def _label(column: pa.ChunkedArray, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The 0/1 label of the rows that have one, and those rows' numbers (None when every row has one).

    Rows without a label cannot be learnt from or scored against: they are left out, with
    one warning line; a label missing on more than half the rows is refused as a wrong column.
    A text label is missing where it holds a missing token, in Parquet as in CSV.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
        column = _as_categorical(column, missing_tokens(config.na_values), encode=False)
    present = pc.is_valid(column)
    if pa.types.is_floating(column.type):
        present = pc.and_(present, pc.invert(pc.is_nan(column)))
    rows = len(column)
    missing = rows - int(pc.sum(present).as_py() or 0)
    if not missing:
        return encode_label(column, config.label, config.positive_class), None
    if missing > MAX_MISSING_LABEL_SHARE * rows:
        raise DataError(
            f"label column {config.label!r} is missing on {missing} of {rows} rows (more than half): "
            "fill it in, or pass --label with another column"
        )
    log.warning("label column %r is missing on %d of %d rows: those rows are left out", config.label, missing, rows)
    kept = np.flatnonzero(present.to_numpy(zero_copy_only=False))
    return encode_label(column.take(kept), config.label, config.positive_class), kept


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
