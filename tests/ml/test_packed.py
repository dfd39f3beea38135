"""Packed grid training equals training each λ alone with Keras' own ``fit``."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from wd_pipeline.ml.network import build_model, kernels
from wd_pipeline.ml.packed import epoch_batches, epoch_order, train_packed

LAMS = [0.0, 1e-2, 0.3]
EPOCHS = 8
SEED = 3
BATCH = 16


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(120, 5)).astype("float32")
    y = ((x[:, :1] - 3) + 0.5 * (x[:, 1:2] - 3) + rng.normal(scale=1.0, size=(120, 1)) > 0).astype("float32")
    return x[:80], y[:80], x[80:], y[80:]


def independent_fit(arrays, lam: float, mode: str, patience: int):
    """The reference, as a user writes it: one model and one ``fit`` per λ, Keras' EarlyStopping."""
    import keras

    x_train, y_train, x_val, y_val = arrays
    model = build_model(x_train, lam=lam, mode=mode, learning_rate=1e-2, seed=SEED)
    callbacks = (
        [keras.callbacks.EarlyStopping(monitor="val_bce", mode="min", patience=patience, restore_best_weights=True)]
        if patience
        else []
    )
    history = model.fit(
        epoch_batches(x_train, y_train, EPOCHS, SEED, BATCH),
        validation_data=(x_val, y_val),
        epochs=EPOCHS,
        steps_per_epoch=-(-len(x_train) // BATCH),
        callbacks=callbacks,
        verbose=0,
    )
    best = callbacks[0].best_epoch + 1 if callbacks else EPOCHS
    return model, history.history, best


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
@pytest.mark.parametrize("patience", [0, 2])
def test_every_member_matches_its_independent_training(arrays, mode: str, patience: int) -> None:
    x_train, y_train, x_val, y_val = arrays
    members = train_packed(
        x_train,
        y_train,
        (x_val, y_val),
        lams=LAMS,
        mode=mode,
        hidden_units=[10, 10],
        learning_rate=1e-2,
        seed=SEED,
        batch_size=BATCH,
        epochs=EPOCHS,
        patience=patience,
    )
    for lam, member in zip(LAMS, members, strict=True):
        model, history, best_epoch = independent_fit(arrays, lam, mode, patience)
        assert member.best_epoch == best_epoch, lam
        assert len(member.history["loss"]) == len(history["loss"]), lam
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            np.testing.assert_allclose(member.history[key], history[key], rtol=1e-4, atol=1e-6, err_msg=f"{lam} {key}")
        for packed_kernel, alone in zip(kernels(member.model), kernels(model), strict=True):
            np.testing.assert_allclose(packed_kernel, alone, rtol=1e-4, atol=1e-5)
        # The unpacked model, normaliser included, predicts as the independently trained one.
        np.testing.assert_allclose(member.model.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-5)


def test_members_differ_only_by_lambda(arrays) -> None:
    x_train, y_train, x_val, y_val = arrays
    big, small = train_packed(
        x_train,
        y_train,
        (x_val, y_val),
        lams=[1.0, 0.0],
        mode="l2",
        hidden_units=[10, 10],
        learning_rate=1e-2,
        seed=SEED,
        batch_size=BATCH,
        epochs=EPOCHS,
        patience=0,
    )
    norm = lambda model: sum(float(np.sum(k**2)) for k in kernels(model, penalized_only=True))  # noqa: E731
    assert norm(big.model) < norm(small.model)


@pytest.mark.parametrize("rows", [80, 64])  # a partial last batch, and none
def test_epoch_function_is_compiled_once_not_per_epoch(arrays, rows: int, caplog) -> None:
    x_train, y_train, x_val, y_val = arrays
    with caplog.at_level(logging.DEBUG, logger="wd_pipeline.ml.packed"):
        train_packed(
            x_train[:rows],
            y_train[:rows],
            (x_val, y_val),
            lams=LAMS,
            mode="l2",
            hidden_units=[10, 10],
            learning_rate=1e-2,
            seed=SEED,
            batch_size=BATCH,
            epochs=3,
            patience=0,
        )
    assert "packed training: 3 epoch(s), epoch function traced 1 time(s)" in caplog.messages


def test_epoch_order_is_a_seeded_permutation_per_epoch() -> None:
    order = epoch_order(10, 3, seed=1)
    assert order.shape == (3, 10)
    assert all(sorted(row) == list(range(10)) for row in order)
    assert not np.array_equal(order[0], order[1])
    np.testing.assert_array_equal(order, epoch_order(10, 3, seed=1))
