"""The λ convention: J = L + λ/2 · Σw² over hidden kernels, i.e. Keras l2 = λ/2."""

from __future__ import annotations

import numpy as np
import pytest

from wd_pipeline.ml.network import build_model, keras_l2, kernels, penalty, weight_norm


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(1).normal(loc=5.0, scale=3.0, size=(40, 4)).astype("float32")


def test_keras_coefficient_is_half_lambda() -> None:
    assert keras_l2(0.2) == pytest.approx(0.1)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 1.0])
def test_penalty_equals_half_lambda_times_squared_hidden_kernels(features: np.ndarray, lam: float) -> None:
    model = build_model(features, lam=lam, seed=3)
    hidden = kernels(model, penalized_only=True)
    assert len(hidden) == 2  # the output layer is not penalised
    by_hand = lam / 2 * sum(float(np.sum(k.astype(np.float64) ** 2)) for k in hidden)
    assert penalty(model) == pytest.approx(by_hand, rel=1e-5)


def test_loss_is_cross_entropy_plus_penalty(features: np.ndarray) -> None:
    """What Keras optimises is exactly the data term plus λ/2 · Σw²."""
    lam = 0.5
    labels = (features[:, :1] > 5).astype("float32")
    model = build_model(features, lam=lam, seed=3)
    result = model.evaluate(features, labels, batch_size=len(features), verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(result["bce"] + penalty(model), rel=1e-4)
    assert penalty(model) > 0.01


def test_zero_lambda_adds_nothing(features: np.ndarray) -> None:
    assert penalty(build_model(features, lam=0.0, seed=3)) == 0.0


def test_weight_norm_counts_all_or_penalised_kernels(features: np.ndarray) -> None:
    model = build_model(features, lam=0.1, seed=3)
    all_sq = sum(float(np.sum(k.astype(np.float64) ** 2)) for k in kernels(model))
    assert weight_norm(model) == pytest.approx(np.sqrt(all_sq), rel=1e-6)
    assert weight_norm(model, penalized_only=True) < weight_norm(model)


def test_normalisation_lives_inside_the_model(features: np.ndarray) -> None:
    """Raw features go in: the adapted layer centres them with the training statistics."""
    model = build_model(features, lam=0.0, seed=3)
    normalised = np.asarray(model.get_layer("normalize")(features))
    assert np.allclose(normalised.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(normalised.std(axis=0), 1, atol=1e-2)


def test_same_seed_same_initial_weights(features: np.ndarray) -> None:
    first, second = build_model(features, lam=0.1, seed=7), build_model(features, lam=0.1, seed=7)
    for a, b in zip(kernels(first), kernels(second), strict=True):
        np.testing.assert_array_equal(a, b)


def _adam_first_step(gradient: np.ndarray, learning_rate: float) -> np.ndarray:
    """Adam's first update by hand: m = (1-β1)g, v = (1-β2)g², bias-corrected, ε = 1e-7."""
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    m, v = (1 - beta_1) * gradient, (1 - beta_2) * gradient**2
    alpha = learning_rate * np.sqrt(1 - beta_2) / (1 - beta_1)
    return alpha * m / (np.sqrt(v) + epsilon)


def _one_step(mode: str, lam: float, features: np.ndarray) -> tuple[dict, dict, dict]:
    """Weights before, data-term gradients, and weights after one full-batch training step."""
    import keras
    import tensorflow as tf

    labels = (features[:, :1] > 5).astype("float32")
    model = build_model(features, lam=lam, mode=mode, learning_rate=0.01, seed=5)
    before = {v.path: np.array(v) for v in model.trainable_variables}
    with tf.GradientTape() as tape:
        data_loss = keras.losses.BinaryCrossentropy()(labels, model(features, training=True))
    grads = tape.gradient(data_loss, [v.value for v in model.trainable_variables])
    data_grads = {v.path: np.array(g) for v, g in zip(model.trainable_variables, grads, strict=True)}
    model.train_on_batch(features, labels)
    after = {v.path: np.array(v) for v in model.trainable_variables}
    return before, data_grads, after


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_l2_update_is_adam_on_gradient_plus_lambda_w(features: np.ndarray, lam: float) -> None:
    """The penalty enters the gradient as λ·w (so the loss holds λ/2·Σw²), then Adam rescales it."""
    before, data_grads, after = _one_step("l2", lam, features)
    for path, w0 in before.items():
        penalised = path.startswith("hidden_") and path.endswith("kernel")
        gradient = data_grads[path] + (lam * w0 if penalised else 0.0)
        np.testing.assert_allclose(after[path], w0 - _adam_first_step(gradient, 0.01), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_decoupled_update_shrinks_hidden_kernels_by_lr_times_lambda(features: np.ndarray, lam: float) -> None:
    """AdamW: w ← w − lr·λ·w − Adam(data gradient); biases and the output layer are not decayed."""
    before, data_grads, after = _one_step("decoupled", lam, features)
    for path, w0 in before.items():
        penalised = path.startswith("hidden_") and path.endswith("kernel")
        decay = 0.01 * lam * w0 if penalised else 0.0
        np.testing.assert_allclose(
            after[path], w0 - decay - _adam_first_step(data_grads[path], 0.01), rtol=1e-4, atol=1e-6
        )


def test_decoupled_mode_adds_no_penalty_to_the_loss(features: np.ndarray) -> None:
    assert penalty(build_model(features, lam=1.0, mode="decoupled", seed=3)) == 0.0


def test_unknown_mode_is_refused(features: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown weight-decay mode 'l1'"):
        build_model(features, lam=0.1, mode="l1")
