"""What the network does to raw columns before its first Dense layer, learnt from training rows only.

The statistics (medians, which columns had gaps, vocabularies, normalisation) are adapted on
the training rows of one fold, or of the refit, and become layers of the saved network, so
the registered model takes the raw table and training and serving cannot disagree.

- Numeric columns: a missing value (NaN) is replaced by the training median, and every column
  that had gaps in training gets a 0/1 "was missing" input beside it; all of these are then
  standardised.
- Categorical columns are looked up in their training vocabulary (``StringLookup``); a missing
  value is its own category, :data:`MISSING`, and a value never seen in training goes to the
  out-of-vocabulary slot. A column with at most ``one_hot_max`` slots is one-hot encoded; a
  larger one is embedded in :data:`EMBEDDING_DIM` dimensions (its table is trained and
  penalised like a hidden kernel, see ``network.py``).

Training encodes each fold's rows once (:func:`encode`, the same layers the saved model
runs), and the packed grid trains every λ on that matrix.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wd_pipeline.data.schema import Role, TableSchema

if TYPE_CHECKING:
    import keras

MISSING = "<missing>"
UNSEEN = "<unseen>"
NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical_{index}"
PREPROCESSING_FILE = "preprocessing.json"
# Every embedded column gets the same width, so the packed grid holds all tables as one and
# looks every column up in a single gather (see ``packed.py``).
EMBEDDING_DIM = 8
ENCODE_ROWS = 65536


class Encoding(enum.StrEnum):
    ONE_HOT = "one_hot"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class NumericColumn:
    """A numeric input: the value that replaces a gap and whether it gets a "was missing" input."""

    name: str
    median: float
    missing_rate: float

    @property
    def indicator(self) -> bool:
        return self.missing_rate > 0


@dataclass(frozen=True)
class CategoricalColumn:
    """A categorical input: its training vocabulary, most frequent first, and how it is encoded."""

    name: str
    vocabulary: tuple[str, ...]
    counts: tuple[int, ...]
    missing_rate: float
    encoding: Encoding
    embedding_dim: int = 0

    @property
    def slots(self) -> int:
        """Lookup indices: the vocabulary plus the out-of-vocabulary slot 0."""
        return len(self.vocabulary) + 1


@dataclass(frozen=True)
class Preprocessing:
    """Everything adapted on one set of training rows; enough to rebuild the input layers exactly."""

    numeric: tuple[NumericColumn, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()
    mean: tuple[float, ...] = ()
    variance: tuple[float, ...] = ()
    rows: int = 0

    @property
    def columns(self) -> list[str]:
        return [column.name for column in (*self.numeric, *self.categorical)]

    @property
    def indicators(self) -> list[str]:
        return [column.name for column in self.numeric if column.indicator]

    @property
    def one_hot(self) -> list[CategoricalColumn]:
        return [column for column in self.categorical if column.encoding is Encoding.ONE_HOT]

    @property
    def embedded(self) -> list[CategoricalColumn]:
        return [column for column in self.categorical if column.encoding is Encoding.EMBEDDING]

    @property
    def dense_width(self) -> int:
        """Width of the encoded matrix: standardised numerics and indicators, then one-hot blocks."""
        return len(self.numeric) + len(self.indicators) + sum(column.slots for column in self.one_hot)

    @property
    def first_layer_width(self) -> int:
        """Inputs of the first hidden layer: the encoded matrix plus every embedding."""
        return self.dense_width + sum(column.embedding_dim for column in self.embedded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        return cls(
            numeric=tuple(NumericColumn(**column) for column in raw.get("numeric", ())),
            categorical=tuple(
                CategoricalColumn(
                    **{
                        **column,
                        "vocabulary": tuple(column["vocabulary"]),
                        "counts": tuple(column["counts"]),
                        "encoding": Encoding(column["encoding"]),
                    }
                )
                for column in raw.get("categorical", ())
            ),
            mean=tuple(raw.get("mean", ())),
            variance=tuple(raw.get("variance", ())),
            rows=int(raw.get("rows", 0)),
        )

    def save(self, folder: Path) -> Path:
        path = folder / PREPROCESSING_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Preprocessing:
        return cls.from_dict(json.loads((Path(folder) / PREPROCESSING_FILE).read_text()))

    def input_config(self) -> dict[str, Any]:
        """What the served wrapper needs to turn a raw frame into the network's inputs."""
        return {
            "numeric_columns": [column.name for column in self.numeric],
            "categorical_columns": [column.name for column in self.categorical],
            "missing_token": MISSING,
        }


@dataclass(frozen=True)
class Encoded:
    """Rows as the packed grid trains on them: the encoded matrix and the embedded columns' lookup indices."""

    dense: np.ndarray  # (rows, dense_width) float32
    indices: np.ndarray  # (rows, embedded columns) int32

    def __len__(self) -> int:
        return len(self.dense)


def adapt(features: pd.DataFrame, schema: TableSchema, *, one_hot_max: int) -> Preprocessing:
    """Learn every statistic of the input layers from these (training) rows."""
    numeric = tuple(_adapt_numeric(features[spec.name]) for spec in schema.columns if spec.role is Role.NUMERIC)
    categorical = tuple(
        _adapt_categorical(features[spec.name], one_hot_max) for spec in schema.columns if spec.role is Role.CATEGORICAL
    )
    prep = Preprocessing(numeric=numeric, categorical=categorical, rows=len(features))
    if not numeric:
        return prep
    mean, variance = _standardisation(features, prep)
    return Preprocessing(numeric=numeric, categorical=categorical, mean=mean, variance=variance, rows=len(features))


def _adapt_numeric(column: pd.Series) -> NumericColumn:
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    present = values[~np.isnan(values)]
    # A column with no values in these rows: 0 is as good as anything, and the indicator carries the gap.
    median = float(np.median(present)) if len(present) else 0.0
    return NumericColumn(str(column.name), median, round(1.0 - len(present) / max(len(values), 1), 6))


def _adapt_categorical(column: pd.Series, one_hot_max: int) -> CategoricalColumn:
    values = category_strings(column)
    names, counts = np.unique(values, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], str(names[i])))
    vocabulary = tuple(str(names[i]) for i in order)
    missing = int(counts[list(names).index(MISSING)]) if MISSING in names else 0
    slots = len(vocabulary) + 1
    encoding = Encoding.ONE_HOT if slots <= one_hot_max else Encoding.EMBEDDING
    return CategoricalColumn(
        name=str(column.name),
        vocabulary=vocabulary,
        counts=tuple(int(counts[i]) for i in order),
        missing_rate=round(missing / max(len(values), 1), 6),
        encoding=encoding,
        embedding_dim=EMBEDDING_DIM if encoding is Encoding.EMBEDDING else 0,
    )


def category_strings(column: pd.Series) -> np.ndarray:
    """A categorical column as an object array of strings, a gap as :data:`MISSING`.

    Values that are not text (integer codes such as a zip code) are spelt as Arrow writes
    them, as the served wrapper and ``score`` spell them, so a category reads the same in
    training and serving.
    """
    values = column.to_numpy(dtype=object, na_value=None)
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        import pyarrow as pa

        text = pa.array(values, from_pandas=True).cast(pa.string())
        values = text.to_numpy(zero_copy_only=False).astype(object)
    missing = pd.isna(values)
    if missing.any():
        values = values.copy()
        values[missing] = MISSING
    return values


def _standardisation(features: pd.DataFrame, prep: Preprocessing) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and variance of every standardised input, as Keras' ``Normalization.adapt`` computes them.

    The inputs are the numeric columns with gaps filled by the median, then the 0/1 "was
    missing" indicators. ``adapt`` takes NumPy's float32 mean and variance over the rows of
    their whole matrix, which (column-ordered, as pandas builds it) reduces each column on its
    own: computed here one column at a time, the same numbers without that matrix.
    """
    mean, variance = [], []
    indicators = []
    for column in prep.numeric:
        values = features[column.name].to_numpy(dtype=np.float32, na_value=np.nan)
        gaps = np.isnan(values)
        filled = np.where(gaps, np.float32(column.median), values)
        mean.append(float(np.mean(filled)))
        variance.append(float(np.var(filled)))
        if column.indicator:
            indicators.append(gaps.astype(np.float32))
    for flags in indicators:
        mean.append(float(np.mean(flags)))
        variance.append(float(np.var(flags)))
    return tuple(mean), tuple(variance)


def numeric_matrix(features: pd.DataFrame, prep: Preprocessing) -> np.ndarray:
    names = [column.name for column in prep.numeric]
    if not names:
        return np.zeros((len(features), 0), dtype=np.float32)
    return features[names].to_numpy(dtype=np.float32, na_value=np.nan)


def model_inputs(features: pd.DataFrame, prep: Preprocessing) -> dict[str, np.ndarray]:
    """The network's named inputs from a raw frame (the served wrapper does the same from its config)."""
    inputs: dict[str, np.ndarray] = {}
    if prep.numeric:
        inputs[NUMERIC_INPUT] = numeric_matrix(features, prep)
    for index, column in enumerate(prep.categorical):
        inputs[CATEGORICAL_INPUT.format(index=index)] = category_strings(features[column.name]).reshape(-1, 1)
    return inputs


def input_layers(prep: Preprocessing) -> tuple[dict[str, Any], Any, list[Any]]:
    """Symbolic inputs, the encoded matrix and the embedded columns' indices (all Keras layers and ops)."""
    import keras

    inputs: dict[str, Any] = {}
    blocks: list[Any] = []
    if prep.numeric:
        raw = keras.Input(shape=(len(prep.numeric),), dtype="float32", name=NUMERIC_INPUT)
        inputs[NUMERIC_INPUT] = raw
        gaps = keras.ops.isnan(raw)
        medians = np.asarray([column.median for column in prep.numeric], dtype=np.float32)
        parts = [keras.ops.where(gaps, medians, raw)]
        flagged = [i for i, column in enumerate(prep.numeric) if column.indicator]
        if flagged:
            parts.append(keras.ops.cast(keras.ops.take(gaps, np.asarray(flagged, dtype=np.int32), axis=1), "float32"))
        joined = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="impute")(parts)
        normalize = keras.layers.Normalization(
            axis=-1, mean=np.asarray(prep.mean), variance=np.asarray(prep.variance), name="normalize"
        )
        blocks.append(normalize(joined))
    indices = []
    for index, column in enumerate(prep.categorical):
        name = CATEGORICAL_INPUT.format(index=index)
        inputs[name] = keras.Input(shape=(1,), dtype="string", name=name)
        one_hot = column.encoding is Encoding.ONE_HOT
        lookup = keras.layers.StringLookup(
            vocabulary=list(column.vocabulary),
            num_oov_indices=1,
            oov_token=UNSEEN,
            output_mode="one_hot" if one_hot else "int",
            name=f"lookup_{index}",
        )
        (blocks if one_hot else indices).append(lookup(inputs[name]))
    if not blocks:
        dense = None
    elif len(blocks) == 1:
        dense = blocks[0]
    else:
        dense = keras.layers.Concatenate(name="encoded")(blocks)
    return inputs, dense, indices


def encoder(prep: Preprocessing) -> keras.Model:
    """Raw inputs → (encoded matrix, embedded indices): the front of every network built from ``prep``."""
    import keras

    inputs, dense, indices = input_layers(prep)
    outputs = {"dense": dense} if dense is not None else {}
    if indices:
        outputs["indices"] = keras.layers.Concatenate(name="indices")(indices) if len(indices) > 1 else indices[0]
    return keras.Model(inputs, outputs, name="encoder")


def encode(prep: Preprocessing, features: pd.DataFrame) -> Encoded:
    """Encode rows once, through the same layers the saved network runs, in slices of :data:`ENCODE_ROWS`.

    The result is allocated once, aligned so that training can hand it to TensorFlow without
    a copy (``host_arrays``), and each slice's raw inputs are built only for that slice: no
    whole-table intermediate beside the result.
    """
    from wd_pipeline.ml.host_arrays import aligned_empty

    model = encoder(prep)
    rows, width, k = len(features), prep.dense_width, len(prep.embedded)
    dense = aligned_empty((rows, width), np.float32)
    indices = aligned_empty((rows, k), np.int32)
    for start in range(0, rows, ENCODE_ROWS):
        end = min(start + ENCODE_ROWS, rows)
        out = model(model_inputs(features.iloc[start:end], prep), training=False)
        if "dense" in out:
            dense[start:end] = np.asarray(out["dense"], dtype=np.float32).reshape(end - start, width)
        if "indices" in out:
            indices[start:end] = np.asarray(out["indices"], dtype=np.int32).reshape(end - start, k)
    return Encoded(dense, indices)


def schema_rows(schema: TableSchema, prep: Preprocessing, *, top: int = 5) -> list[dict[str, Any]]:
    """One readable row per input column: role, source type, encoding, missing share and what was learnt."""
    numeric = {column.name: column for column in prep.numeric}
    categorical = {column.name: column for column in prep.categorical}
    rows = []
    for spec in schema.columns:
        if spec.name in numeric:
            column = numeric[spec.name]
            learnt = f"median {column.median:.6g}" + (" + was-missing input" if column.indicator else "")
            rows.append(
                _schema_row(spec.name, spec.role, spec.source_type, "standardised", column.missing_rate, learnt)
            )
        elif spec.name in categorical:
            cat = categorical[spec.name]
            shown = ", ".join(
                f"{value} ({count})" for value, count in zip(cat.vocabulary[:top], cat.counts[:top], strict=False)
            )
            more = f", … {len(cat.vocabulary) - top} more" if len(cat.vocabulary) > top else ""
            encoding = f"{cat.encoding} ({cat.slots} slots" + (
                f", dim {cat.embedding_dim})" if cat.embedding_dim else ")"
            )
            learnt = f"{len(cat.vocabulary)} categories: {shown}{more}"
            rows.append(_schema_row(spec.name, spec.role, spec.source_type, encoding, cat.missing_rate, learnt))
    return rows


def _schema_row(name: str, role: Role, source_type: str, encoding: str, missing: float, learnt: str) -> dict[str, Any]:
    return {
        "column": name,
        "role": str(role),
        "type": source_type,
        "encoding": encoding,
        "missing_pct": round(100 * missing, 2),
        "learnt_on_training_rows": learnt,
    }
