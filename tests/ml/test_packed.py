"""Packed grid training equals training each λ alone with Keras' own ``fit``."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, densify_gradients, mixed_table, numeric_frame, numeric_prep
from wd_pipeline.ml import preprocessing
from wd_pipeline.ml.network import build_model, embeddings, kernels, predict_frame
from wd_pipeline.ml.packed import epoch_batches, epoch_order, train_packed
from wd_pipeline.ml.preprocessing import Encoded, Preprocessing

LAMS = [0.0, 1e-2, 0.3]
EPOCHS = 8
SEED = 3
BATCH = 16


@dataclass(frozen=True)
class Table:
    """Raw training and validation rows, the preprocessing adapted on the training rows, and the encoded rows."""

    prep: Preprocessing
    train: pd.DataFrame
    y_train: np.ndarray
    val: pd.DataFrame
    y_val: np.ndarray

    def encoded(self) -> tuple[tuple[Encoded, np.ndarray], tuple[Encoded, np.ndarray]]:
        return (
            (preprocessing.encode(self.prep, self.train), self.y_train),
            (preprocessing.encode(self.prep, self.val), self.y_val),
        )


@functools.cache
def numeric() -> Table:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(120, 5)).astype("float32")
    y = ((x[:, :1] - 3) + 0.5 * (x[:, 1:2] - 3) + rng.normal(scale=1.0, size=(120, 1)) > 0).astype("float32")
    frame = numeric_frame(x)
    return Table(numeric_prep(x[:80]), frame.iloc[:80], y[:80], frame.iloc[80:], y[80:])


@functools.cache
def mixed() -> Table:
    """Gaps in a numeric and a categorical column, a one-hot and an embedded column, and validation rows holding
    a city and a colour never seen in training."""
    table = mixed_table(rows=120, seed=1)
    train, val = table.rows(0, 80), table.rows(80, 120)
    val.frame.loc[[0, 5], "city"] = "city-never-seen"
    val.frame.loc[[1, 2], "colour"] = "purple"
    prep = preprocessing.adapt(train.features, table.schema, one_hot_max=MIXED_ONE_HOT_MAX)
    assert [c.name for c in prep.one_hot] == ["colour"] and [c.name for c in prep.embedded] == ["city"]
    assert prep.indicators == ["income"]
    return Table(prep, train.features, train.label, val.features, val.label)


TABLES = {"numeric": numeric, "mixed": mixed}


@pytest.fixture(params=list(TABLES))
def table(request) -> Table:
    return TABLES[request.param]()


def independent_fit(table: Table, lam: float, mode: str, patience: int):
    """The reference, as a user writes it: one model and one ``fit`` per λ on raw rows, Keras' EarlyStopping."""
    import keras
    import tensorflow as tf

    model = build_model(table.prep, lam=lam, mode=mode, learning_rate=1e-2, seed=SEED)
    densify_gradients(model)
    callbacks = (
        [keras.callbacks.EarlyStopping(monitor="val_bce", mode="min", patience=patience, restore_best_weights=True)]
        if patience
        else []
    )
    val_inputs = {k: tf.constant(v) for k, v in preprocessing.model_inputs(table.val, table.prep).items()}
    history = model.fit(
        epoch_batches(preprocessing.model_inputs(table.train, table.prep), table.y_train, EPOCHS, SEED, BATCH),
        validation_data=tf.data.Dataset.from_tensors((val_inputs, tf.constant(table.y_val))),
        epochs=EPOCHS,
        steps_per_epoch=-(-len(table.train) // BATCH),
        callbacks=callbacks,
        verbose=0,
    )
    best = callbacks[0].best_epoch + 1 if callbacks else EPOCHS
    return model, history.history, best


def packed(table: Table, lams: list[float], mode: str, patience: int, epochs: int = EPOCHS):
    train, validation = table.encoded()
    return train_packed(
        table.prep,
        train,
        validation,
        lams=lams,
        mode=mode,
        hidden_units=[10, 10],
        learning_rate=1e-2,
        seed=SEED,
        batch_size=BATCH,
        epochs=epochs,
        patience=patience,
    )


@pytest.mark.parametrize(
    ("kind", "mode", "patience"),
    [
        ("numeric", "l2", 0),
        ("numeric", "l2", 2),
        ("numeric", "decoupled", 0),
        ("numeric", "decoupled", 2),
        # Both modes and both stopping rules once each: every pairing costs three more Keras fits.
        ("mixed", "l2", 2),
        ("mixed", "decoupled", 0),
    ],
)
def test_every_member_matches_its_independent_training(kind: str, mode: str, patience: int) -> None:
    table = TABLES[kind]()
    members = packed(table, LAMS, mode, patience)
    for lam, member in zip(LAMS, members, strict=True):
        model, history, best_epoch = independent_fit(table, lam, mode, patience)
        assert member.best_epoch == best_epoch, lam
        assert len(member.history["loss"]) == len(history["loss"]), lam
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            np.testing.assert_allclose(member.history[key], history[key], rtol=1e-4, atol=1e-6, err_msg=f"{lam} {key}")
        for packed_kernel, alone in zip(kernels(member.model), kernels(model), strict=True):
            np.testing.assert_allclose(packed_kernel, alone, rtol=1e-4, atol=1e-5)
        assert len(embeddings(member.model)) == len(table.prep.embedded)
        for packed_table, alone in zip(embeddings(member.model), embeddings(model), strict=True):
            np.testing.assert_allclose(packed_table, alone, rtol=1e-4, atol=1e-5)
        # The unpacked model, input layers included, predicts on raw rows as the independently trained one,
        # and the probabilities training hands on are that model's.
        expected_val = predict_frame(model, table.prep, table.val)
        np.testing.assert_allclose(predict_frame(member.model, table.prep, table.val), expected_val, atol=1e-5)
        np.testing.assert_allclose(member.val_probability, expected_val, atol=1e-5)
        np.testing.assert_allclose(member.train_probability, predict_frame(model, table.prep, table.train), atol=1e-5)


def test_members_differ_only_by_lambda(table: Table) -> None:
    big, small = packed(table, [1.0, 0.0], "l2", patience=0)
    norm = lambda model: sum(float(np.sum(m**2)) for m in kernels(model, penalized_only=True) + embeddings(model))  # noqa: E731
    assert norm(big.model) < norm(small.model)
    for big_table, small_table in zip(embeddings(big.model), embeddings(small.model), strict=True):
        assert float(np.sum(big_table**2)) < float(np.sum(small_table**2))


def test_training_without_validation_keeps_the_last_epoch(table: Table) -> None:
    train, _ = table.encoded()
    (member,) = train_packed(
        table.prep,
        train,
        None,
        lams=[0.1],
        mode="l2",
        hidden_units=[10, 10],
        learning_rate=1e-2,
        seed=SEED,
        batch_size=BATCH,
        epochs=3,
        patience=2,
    )
    assert member.best_epoch == 3 and member.val_probability is None
    assert sorted(member.history) == ["accuracy", "bce", "loss"]
    np.testing.assert_allclose(
        member.train_probability, predict_frame(member.model, table.prep, table.train), atol=1e-5
    )


@pytest.mark.parametrize("rows", [80, 64])  # a partial last batch, and none
def test_epoch_function_is_compiled_once_not_per_epoch(rows: int, caplog) -> None:
    table = mixed()
    train, validation = table.encoded()
    train = (Encoded(train[0].dense[:rows], train[0].indices[:rows]), train[1][:rows])
    with caplog.at_level(logging.DEBUG, logger="wd_pipeline.ml.packed"):
        train_packed(
            table.prep,
            train,
            validation,
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
