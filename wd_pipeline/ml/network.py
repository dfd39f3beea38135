"""The reference network, the λ convention and the two kinds of weight decay.

Mode ``l2`` (the reference) writes the objective as J(θ) = L(θ) + λ/2 · Σ w² over the
kernels of the hidden layers (biases and the output layer are not penalised). Keras'
``L2(l2)`` adds ``l2 · Σ w²``, without the ½, so the layer gets ``l2 = λ / 2``.
:func:`keras_l2` is the only place that conversion happens.

An embedded categorical column (a vocabulary too large to one-hot) feeds the first hidden
layer through its embedding table E, so the product E·W₁ plays the part that the one-hot
rows of W₁ play for a small vocabulary. The table gets the same λ: left unpenalised, E could
grow while W₁ shrinks, the penalty would fall without the function changing, and that
column would escape regularisation altogether.

Mode ``decoupled`` (AdamW, Loshchilov & Hutter) leaves the loss alone and shrinks the same
kernels after every step: w ← w − lr · λ · w. With plain SGD both modes give the same update;
with Adam the penalty's gradient λw is divided by Adam's running scale like any gradient, so
weights with large gradients are barely decayed, whereas decoupled decay hits every weight
at the same rate. ``tests/ml/test_network.py`` checks both against hand computations.

Mode ``dropout`` penalises nothing: during training each hidden layer's outputs are zeroed
at rate p and the survivors scaled by 1 / (1 − p) (Keras' ``Dropout``, inactive when the
model predicts), so the same network cannot lean on any single unit. Its grid value is p,
not λ (``modes.py``).

TensorFlow is imported inside the functions: importing this module must stay cheap so the
CLI's ``--help`` and Prefect's flow registration don't pay several seconds for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wd_pipeline.ml import preprocessing

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from wd_pipeline.ml.preprocessing import Preprocessing

PENALIZED_LAYER_PREFIX = "hidden_"
EMBEDDING_PREFIX = "embedding_"
EMBEDDING_SEED = 100  # embedding initialisers are seeded apart from the Dense layers'
MODES = ("l2", "decoupled", "dropout")
DROPOUT_PREFIX = "dropout_"
DROPOUT_SEED = 200  # dropout masks are seeded apart from the initialisers


def keras_l2(lam: float) -> float:
    """Keras' L2 coefficient for our λ (Keras has no ½ in front of Σw²)."""
    return lam / 2.0


def build_model(
    prep: Preprocessing,
    *,
    lam: float,
    mode: str = "l2",
    dropout: float = 0.0,
    hidden_units: Sequence[int] = (10, 10),
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> keras.Model:
    """Build and compile the reference network for one λ, its input layers rebuilt from ``prep``.

    ``dropout`` > 0 puts a ``Dropout`` layer at that rate after each hidden layer (mode
    ``dropout``, where λ is 0).

    The input layers (imputation, lookups, normalisation; ``preprocessing.py``) live inside
    the model, so the saved model takes raw columns and serving cannot forget a step.
    Initialisers get explicit seeds instead of ``keras.utils.set_random_seed`` because grid
    points train in parallel threads and a global seed would race between them.
    """
    import keras

    inputs, dense, indices = preprocessing.input_layers(prep)
    penalized = keras.regularizers.L2(keras_l2(lam)) if mode == "l2" and lam > 0 else None
    blocks = [dense] if dense is not None else []
    for index, (column, looked_up) in enumerate(zip(prep.embedded, indices, strict=True)):
        table = keras.layers.Embedding(
            column.slots,
            column.embedding_dim,
            embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seed + EMBEDDING_SEED + index),
            embeddings_regularizer=penalized,
            name=f"{EMBEDDING_PREFIX}{index + 1}",
        )
        blocks.append(keras.layers.Reshape((column.embedding_dim,))(table(looked_up)))
    x = blocks[0] if len(blocks) == 1 else keras.layers.Concatenate(name="first_layer_input")(blocks)
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(
            units,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
            kernel_regularizer=penalized,
            name=f"{PENALIZED_LAYER_PREFIX}{i + 1}",
        )(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, seed=seed + DROPOUT_SEED + i, name=f"{DROPOUT_PREFIX}{i + 1}")(x)
    outputs = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + len(hidden_units)),
        name="output",
    )(x)
    model = keras.Model(inputs, outputs, name="weight_decay_mlp")
    model.compile(
        optimizer=_optimizer(model, mode, lam, learning_rate),
        loss="binary_crossentropy",
        # The penalty is part of ``loss``/``val_loss``; ``bce`` is the data term alone,
        # which is what λ must be selected on.
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.BinaryCrossentropy(name="bce"),
        ],
    )
    return model


def _optimizer(model: keras.Model, mode: str, lam: float, learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam for ``l2`` and ``dropout``; AdamW decaying only the hidden kernels for ``decoupled``."""
    import keras

    if mode not in MODES:
        raise ValueError(f"unknown weight-decay mode {mode!r}; use one of {MODES}")
    if mode != "decoupled" or lam == 0:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=lam)
    penalized = {id(weight) for weight in penalized_variables(model)}
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if id(v) not in penalized])
    return optimizer


def penalized_variables(model: keras.Model) -> list[Any]:
    """What weight decay acts on: embedding tables, then the hidden layers' kernels."""
    tables = [layer.embeddings for layer in model.layers if layer.name.startswith(EMBEDDING_PREFIX)]
    hidden = [layer.kernel for layer in model.layers if layer.name.startswith(PENALIZED_LAYER_PREFIX)]
    return tables + hidden


def kernels(model: keras.Model, *, penalized_only: bool = False) -> list[np.ndarray]:
    """Kernel matrices of the Dense layers, in order."""
    import keras

    return [
        np.asarray(layer.kernel)
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
        and (not penalized_only or layer.name.startswith(PENALIZED_LAYER_PREFIX))
    ]


def embeddings(model: keras.Model) -> list[np.ndarray]:
    """Embedding tables of the large-vocabulary categorical columns, in order."""
    return [np.asarray(layer.embeddings) for layer in model.layers if layer.name.startswith(EMBEDDING_PREFIX)]


def weight_norm(model: keras.Model, *, penalized_only: bool = False) -> float:
    """Euclidean norm of the trained matrices (kernels and embedding tables): the quantity weight decay shrinks.

    ``penalized_only`` leaves out the output layer's kernel, which no mode penalises.
    """
    matrices = kernels(model, penalized_only=penalized_only) + embeddings(model)
    squares = sum(float(np.sum(np.square(m, dtype=np.float64))) for m in matrices)
    return float(np.sqrt(squares))


def penalty(model: keras.Model) -> float:
    """The regularisation term Keras adds to the loss for this model's current weights."""
    return float(sum(float(np.asarray(loss)) for loss in model.losses))


def describe(model: keras.Model) -> dict[str, Any]:
    """Small summary for logging: parameter counts by kind."""
    return {
        "n_params": int(model.count_params()),
        "n_kernel_weights": int(sum(k.size for k in kernels(model))),
    }


PREDICT_ROWS = 65536


def predict_probability(model: keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities of the positive class for named raw inputs (:func:`preprocessing.model_inputs`), flat.

    Called eagerly on slices of 65,536 rows rather than through ``model.predict``: predict
    traces a graph for every freshly trained or loaded model and steps 4,096 rows at a time.
    The values are the same.
    """
    rows = len(next(iter(inputs.values())))
    if rows == 0:
        return np.zeros(0, dtype=np.float32)
    parts = [
        np.asarray(
            model({name: value[start : start + PREDICT_ROWS] for name, value in inputs.items()}, training=False)
        ).ravel()
        for start in range(0, rows, PREDICT_ROWS)
    ]
    return np.concatenate(parts)


def predict_frame(model: keras.Model, prep: Preprocessing, features: pd.DataFrame) -> np.ndarray:
    """Probabilities for a raw frame: the columns ``prep`` names, everything else ignored."""
    return predict_probability(model, preprocessing.model_inputs(features, prep))


def load(path: str) -> keras.Model:
    """Load a saved network in Keras' safe mode (no arbitrary code from the file)."""
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)
