"""Tables and adapted preprocessing for network tests: an all-numeric matrix, and a mixed table with gaps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.ml import preprocessing
from wd_pipeline.ml.preprocessing import Preprocessing

LABEL = "y"
COLOURS = ("red", "green", "blue", "grey")
CITIES = tuple(f"city-{i:02d}" for i in range(40))
MIXED_FEATURES = ["income", "age", "colour", "city"]
# One-hot for colour (5 values with the missing category, 6 slots), an embedding for city (41 slots).
MIXED_ONE_HOT_MAX = 8


def column_names(width: int) -> list[str]:
    return [f"x{i}" for i in range(width)]


def numeric_frame(x: np.ndarray, names: Sequence[str] | None = None) -> pd.DataFrame:
    """A matrix as a frame of float columns, named x0, x1, … unless ``names`` are given."""
    return pd.DataFrame(np.asarray(x, dtype=np.float64), columns=list(names or column_names(x.shape[1])))


def frame_schema(frame: pd.DataFrame, features: Sequence[str], label: str = LABEL) -> TableSchema:
    """Roles as ingest gives them: text columns categorical, everything else numeric; Arrow type as source type
    (text as ``string``, whichever string type pandas hands Arrow)."""
    arrow = pa.Schema.from_pandas(frame[list(features)], preserve_index=False)
    columns = []
    for name in features:
        kind = arrow.field(name).type
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        columns.append(ColumnSpec(name, Role.CATEGORICAL if text else Role.NUMERIC, "string" if text else str(kind)))
    return TableSchema(label, tuple(columns))


def numeric_prep(x: np.ndarray, names: Sequence[str] | None = None) -> Preprocessing:
    """An all-numeric preprocessing adapted on the rows of ``x`` (no gaps: no indicators, no vocabularies)."""
    frame = numeric_frame(x, names)
    return preprocessing.adapt(frame, frame_schema(frame, list(frame.columns)), one_hot_max=32)


def numeric_inputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """The named input an all-numeric network takes."""
    return {preprocessing.NUMERIC_INPUT: np.asarray(x, dtype=np.float32)}


@dataclass(frozen=True)
class MixedTable:
    """A census-like table: two numeric columns (one with gaps), a small and a large categorical column."""

    frame: pd.DataFrame  # MIXED_FEATURES, then the 0/1 label
    schema: TableSchema

    @property
    def features(self) -> pd.DataFrame:
        return self.frame[MIXED_FEATURES]

    @property
    def label(self) -> np.ndarray:
        return self.frame[LABEL].to_numpy(np.float32).reshape(-1, 1)

    def rows(self, start: int, stop: int) -> MixedTable:
        return MixedTable(self.frame.iloc[start:stop].reset_index(drop=True), self.schema)


def mixed_table(rows: int = 160, seed: int = 0) -> MixedTable:
    """Income (about 15 % missing), age, colour (4 values, about 8 % missing) and city (40 values); the label
    depends on income, colour and city, so every kind of input carries signal."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(mean=3.0, sigma=0.5, size=rows)
    age = rng.integers(18, 80, size=rows)
    colour = rng.choice(COLOURS, size=rows).astype(object)
    city = rng.choice(CITIES, size=rows).astype(object)
    city_effect = np.linspace(-1.5, 1.5, len(CITIES))[[CITIES.index(c) for c in city]]
    score = (
        (np.log(income) - 3.0) * 2.0 + (colour == "red") * 1.2 - (colour == "grey") * 0.8 + city_effect
    ) + rng.normal(scale=0.5, size=rows)
    label = (score > np.median(score)).astype(np.int64)
    income[rng.random(rows) < 0.15] = np.nan
    colour[rng.random(rows) < 0.08] = None
    frame = pd.DataFrame({"income": income, "age": age, "colour": colour, "city": city, LABEL: label})
    return MixedTable(frame, frame_schema(frame, MIXED_FEATURES))


def fit_full_batch(model: Any, inputs: dict[str, np.ndarray], y: np.ndarray, epochs: int) -> None:
    """``model.fit`` on named raw inputs, one batch per epoch (Keras' numpy adapter refuses string arrays)."""
    from wd_pipeline.ml.packed import epoch_batches

    if epochs:
        rows = len(y)
        model.fit(epoch_batches(inputs, y, epochs, 0, rows), epochs=epochs, steps_per_epoch=1, verbose=0)


def densify_gradients(model: Any) -> None:
    """Make the model's optimiser see an embedding's gradient as a dense matrix, as packed training does.

    The gradient of a lookup is sparse (one slice per looked-up row, repeated rows repeated),
    and Keras' Adam squares those slices before adding them up, so its second moment of a
    row looked up k times in a batch is Σ gᵢ² instead of (Σ gᵢ)²: not Adam on the gradient.
    Dense, the update is the textbook one that packed training and the hand computations use.
    """
    import tensorflow as tf

    optimizer = model.optimizer
    apply = optimizer.apply

    def dense_apply(grads: Any, trainable_variables: Any = None) -> Any:
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return apply(dense, trainable_variables)

    optimizer.apply = dense_apply
