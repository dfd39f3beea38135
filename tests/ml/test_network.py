"""The λ convention: J = L + λ/2 · Σw² over hidden kernels and embedding tables, i.e. Keras l2 = λ/2."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, densify_gradients, mixed_table, numeric_inputs, numeric_prep
from wd_pipeline.ml import preprocessing
from wd_pipeline.ml.network import build_model, embeddings, keras_l2, kernels, penalty, weight_norm
from wd_pipeline.ml.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(1).normal(loc=5.0, scale=3.0, size=(40, 4)).astype("float32")


@pytest.fixture(scope="module")
def prep(features: np.ndarray) -> Preprocessing:
    return numeric_prep(features)


@pytest.fixture(scope="module")
def mixed() -> tuple[Preprocessing, dict[str, Any], np.ndarray]:
    """A table with gaps, a one-hot and an embedded column: its preprocessing, named inputs (as tensors) and labels."""
    import tensorflow as tf

    table = mixed_table(rows=60, seed=4)
    prep = preprocessing.adapt(table.features, table.schema, one_hot_max=MIXED_ONE_HOT_MAX)
    assert [column.name for column in prep.one_hot] == ["colour"]
    assert [column.name for column in prep.embedded] == ["city"]
    assert table.features["city"].nunique() == 26  # of 40: the table is small
    inputs = {name: tf.constant(value) for name, value in preprocessing.model_inputs(table.features, prep).items()}
    return prep, inputs, table.label


@pytest.fixture(scope="module", params=["numeric", "mixed"])
def table(request, prep: Preprocessing, features: np.ndarray, mixed) -> tuple[Preprocessing, Any, np.ndarray]:
    """Both kinds of network: (preprocessing, named inputs, labels)."""
    if request.param == "mixed":
        return mixed
    return prep, numeric_inputs(features), (features[:, :1] > 5).astype("float32")


def test_keras_coefficient_is_half_lambda() -> None:
    assert keras_l2(0.2) == pytest.approx(0.1)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 1.0])
def test_penalty_equals_half_lambda_times_squared_hidden_kernels(prep: Preprocessing, lam: float) -> None:
    model = build_model(prep, lam=lam, seed=3)
    hidden = kernels(model, penalized_only=True)
    assert len(hidden) == 2  # the output layer is not penalised
    assert embeddings(model) == []
    by_hand = lam / 2 * sum(float(np.sum(k.astype(np.float64) ** 2)) for k in hidden)
    assert penalty(model) == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_an_embedding_table_is_penalised_like_a_hidden_kernel(mixed, lam: float) -> None:
    model = build_model(mixed[0], lam=lam, seed=3)
    (table,) = embeddings(model)
    hidden = kernels(model, penalized_only=True)
    squares = [float(np.sum(m.astype(np.float64) ** 2)) for m in [table, *hidden]]
    assert squares[0] > 0
    assert penalty(model) == pytest.approx(lam / 2 * sum(squares), rel=1e-5)


def test_embedding_feeds_the_first_hidden_layer(mixed) -> None:
    """Standardised numerics, one was-missing input, colour one-hot (5 values + unseen), then city's embedding."""
    prep = mixed[0]
    city = prep.embedded[0]
    assert (city.slots, city.embedding_dim) == (27, preprocessing.EMBEDDING_DIM)  # 26 cities seen + unseen
    assert prep.indicators == ["income"]
    assert prep.dense_width == 2 + 1 + 6
    assert prep.first_layer_width == prep.dense_width + preprocessing.EMBEDDING_DIM
    model = build_model(prep, lam=0.1, hidden_units=(5,), seed=3)
    assert embeddings(model)[0].shape == (27, preprocessing.EMBEDDING_DIM)
    assert kernels(model)[0].shape == (prep.first_layer_width, 5)


def test_loss_is_cross_entropy_plus_penalty(table) -> None:
    """What Keras optimises is exactly the data term plus λ/2 · Σw²."""
    prep, inputs, labels = table
    model = build_model(prep, lam=0.5, seed=3)
    result = model.evaluate(inputs, labels, batch_size=len(labels), verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(result["bce"] + penalty(model), rel=1e-4)
    assert penalty(model) > 0.01


def test_zero_lambda_adds_nothing(table) -> None:
    assert penalty(build_model(table[0], lam=0.0, seed=3)) == 0.0


def test_weight_norm_counts_all_or_penalised_matrices(table) -> None:
    model = build_model(table[0], lam=0.1, seed=3)
    all_sq = sum(float(np.sum(m.astype(np.float64) ** 2)) for m in kernels(model) + embeddings(model))
    assert weight_norm(model) == pytest.approx(np.sqrt(all_sq), rel=1e-6)
    output_sq = float(np.sum(kernels(model)[-1].astype(np.float64) ** 2))
    assert weight_norm(model, penalized_only=True) == pytest.approx(np.sqrt(all_sq - output_sq), rel=1e-6)


def test_normalisation_lives_inside_the_model(prep: Preprocessing, features: np.ndarray) -> None:
    """Raw features go in: the adapted layer centres them with the training statistics."""
    model = build_model(prep, lam=0.0, seed=3)
    normalised = np.asarray(model.get_layer("normalize")(features))
    assert np.allclose(normalised.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(normalised.std(axis=0), 1, atol=1e-2)


def test_same_seed_same_initial_weights(table) -> None:
    first, second = build_model(table[0], lam=0.1, seed=7), build_model(table[0], lam=0.1, seed=7)
    for a, b in zip(kernels(first) + embeddings(first), kernels(second) + embeddings(second), strict=True):
        np.testing.assert_array_equal(a, b)


def _adam_first_step(gradient: np.ndarray, learning_rate: float) -> np.ndarray:
    """Adam's first update by hand: m = (1-β1)g, v = (1-β2)g², bias-corrected, ε = 1e-7."""
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    m, v = (1 - beta_1) * gradient, (1 - beta_2) * gradient**2
    alpha = learning_rate * np.sqrt(1 - beta_2) / (1 - beta_1)
    return alpha * m / (np.sqrt(v) + epsilon)


def _one_step(mode: str, lam: float, table) -> tuple[dict, dict, dict]:
    """Weights before, data-term gradients, and weights after one full-batch training step."""
    import keras
    import tensorflow as tf

    prep, inputs, labels = table
    inputs = {name: tf.constant(value) for name, value in inputs.items()}
    model = build_model(prep, lam=lam, mode=mode, learning_rate=0.01, seed=5)
    before = {v.path: np.array(v) for v in model.trainable_variables}
    with tf.GradientTape() as tape:
        data_loss = keras.losses.BinaryCrossentropy()(labels, model(inputs, training=True))
    grads = tape.gradient(data_loss, [v.value for v in model.trainable_variables])
    # An embedding's gradient is sparse (the looked-up rows only): densify it for the hand computation.
    data_grads = {
        v.path: np.array(tf.convert_to_tensor(g)) for v, g in zip(model.trainable_variables, grads, strict=True)
    }
    densify_gradients(model)
    model.train_on_batch(inputs, labels)
    after = {v.path: np.array(v) for v in model.trainable_variables}
    return before, data_grads, after


def _penalised(path: str) -> bool:
    return (path.startswith("hidden_") and path.endswith("kernel")) or path.startswith("embedding_")


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_l2_update_is_adam_on_gradient_plus_lambda_w(table, lam: float) -> None:
    """The penalty enters the gradient as λ·w (so the loss holds λ/2·Σw²), then Adam rescales it."""
    before, data_grads, after = _one_step("l2", lam, table)
    assert any(_penalised(path) for path in before)
    for path, w0 in before.items():
        gradient = data_grads[path] + (lam * w0 if _penalised(path) else 0.0)
        np.testing.assert_allclose(after[path], w0 - _adam_first_step(gradient, 0.01), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_decoupled_update_shrinks_hidden_kernels_by_lr_times_lambda(table, lam: float) -> None:
    """AdamW: w ← w − lr·λ·w − Adam(data gradient); biases and the output layer are not decayed."""
    before, data_grads, after = _one_step("decoupled", lam, table)
    for path, w0 in before.items():
        decay = 0.01 * lam * w0 if _penalised(path) else 0.0
        np.testing.assert_allclose(
            after[path], w0 - decay - _adam_first_step(data_grads[path], 0.01), rtol=1e-4, atol=1e-6
        )


def test_decoupled_mode_adds_no_penalty_to_the_loss(table) -> None:
    assert penalty(build_model(table[0], lam=1.0, mode="decoupled", seed=3)) == 0.0


def test_unknown_mode_is_refused(prep: Preprocessing) -> None:
    with pytest.raises(ValueError, match="unknown weight-decay mode 'l1'"):
        build_model(prep, lam=0.1, mode="l1")


def test_dropout_follows_each_hidden_layer_and_is_off_when_predicting(prep: Preprocessing, features) -> None:
    model = build_model(prep, lam=0.0, mode="dropout", dropout=0.4, hidden_units=(6, 5), seed=3)
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.startswith(("hidden_", "dropout_"))] == [
        "hidden_1",
        "dropout_1",
        "hidden_2",
        "dropout_2",
    ]
    assert {model.get_layer(n).rate for n in ("dropout_1", "dropout_2")} == {0.4}
    assert penalty(model) == 0.0 and not model.optimizer.weight_decay
    inputs = numeric_inputs(features)
    np.testing.assert_array_equal(np.asarray(model(inputs, training=False)), np.asarray(model(inputs, training=False)))
    assert not np.array_equal(np.asarray(model(inputs, training=True)), np.asarray(model(inputs, training=False)))
    # Dropout adds no weights: the same seed starts from the network without it.
    for with_dropout, without in zip(
        kernels(model), kernels(build_model(prep, lam=0.0, hidden_units=(6, 5), seed=3)), strict=True
    ):
        np.testing.assert_array_equal(with_dropout, without)
