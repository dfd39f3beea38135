"""The λ convention: J = L + λ/2 · Σw² over hidden kernels, i.e. Keras l2 = λ/2."""

from __future__ import annotations

import numpy as np
import pytest

from wd_pipeline.model import build_model, kernels, keras_l2, penalty, weight_norm


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
