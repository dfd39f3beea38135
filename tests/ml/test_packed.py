"""Packed grid training equals training each λ alone with Keras' own ``fit``, each fold's members on their fold.

Dropout members: at rate 0 exactly; at a positive rate statistically, because the packed
masks come from a per-step stateless generator that Keras' ``Dropout`` layers do not share
(same weights, many masks: the training-mode loss has the same mean and spread). Class
weights: exactly, against Keras' ``class_weight``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, densify_gradients, mixed_table, numeric_frame, numeric_prep
from wd_pipeline.ml import class_weights, preprocessing
from wd_pipeline.ml import packed as packed_module
from wd_pipeline.ml.network import build_model, embeddings, kernels, predict_frame
from wd_pipeline.ml.packed import (
    FoldPack,
    _Dropout,
    _Stack,
    epoch_batches,
    epoch_order,
    train_folds_packed,
    train_packed,
)
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


def independent_fit(
    table: Table,
    lam: float,
    mode: str,
    patience: int,
    class_weight: dict[int, float] | None = None,
    seed: int = SEED,
):
    """The reference, as a user writes it: one model and one ``fit`` per λ on raw rows, Keras' EarlyStopping."""
    import keras
    import tensorflow as tf

    model = build_model(table.prep, lam=lam, mode=mode, learning_rate=1e-2, seed=seed)
    densify_gradients(model)
    callbacks = (
        [keras.callbacks.EarlyStopping(monitor="val_bce", mode="min", patience=patience, restore_best_weights=True)]
        if patience
        else []
    )
    val_inputs = {k: tf.constant(v) for k, v in preprocessing.model_inputs(table.val, table.prep).items()}
    history = model.fit(
        epoch_batches(preprocessing.model_inputs(table.train, table.prep), table.y_train, EPOCHS, seed, BATCH),
        validation_data=tf.data.Dataset.from_tensors((val_inputs, tf.constant(table.y_val))),
        epochs=EPOCHS,
        steps_per_epoch=-(-len(table.train) // BATCH),
        callbacks=callbacks,
        class_weight=class_weight,
        verbose=0,
    )
    best = callbacks[0].best_epoch + 1 if callbacks else EPOCHS
    return model, history.history, best


def packed(table: Table, lams: list[float], mode: str, patience: int, epochs: int = EPOCHS, **options):
    train, validation = table.encoded()
    return train_packed(
        table.prep,
        train,
        validation,
        lams=lams,
        mode=mode,
        **options,
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


@pytest.mark.parametrize("slice_rows", [7, 8])  # 40 validation rows: five slices and a remainder, five and none
def test_the_validation_pass_in_slices_scores_as_one_pass_over_the_rows(
    table: Table, slice_rows: int, monkeypatch
) -> None:
    whole = packed(table, LAMS, "l2", patience=0, epochs=3)
    monkeypatch.setattr(packed_module, "PREDICT_ROWS", slice_rows)
    sliced = packed(table, LAMS, "l2", patience=0, epochs=3)
    for alone, cut in zip(whole, sliced, strict=True):
        np.testing.assert_allclose(cut.history["val_bce"], alone.history["val_bce"], rtol=1e-6)
        np.testing.assert_array_equal(cut.history["val_accuracy"], alone.history["val_accuracy"])
        np.testing.assert_allclose(cut.val_probability, alone.val_probability, rtol=1e-6)


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
    assert "packed training: 3 epoch(s), epoch function traced 1 time(s), as a plain graph" in caplog.messages


@pytest.mark.parametrize(("mode", "patience"), [("l2", 2), ("decoupled", 0)])
def test_an_xla_compiled_training_matches_the_plain_graph(mode: str, patience: int, monkeypatch, caplog) -> None:
    """Long trainings are XLA-compiled, short ones not: both give the same members, up to float rounding."""
    tables = folds()
    plain = packed_folds(tables, LAMS, mode, patience)
    monkeypatch.setattr(packed_module, "XLA_MIN_STEPS", 0)
    with caplog.at_level(logging.DEBUG, logger="wd_pipeline.ml.packed"):
        compiled = packed_folds(tables, LAMS, mode, patience)
    assert any(message.endswith("XLA-compiled") for message in caplog.messages)
    for plain_members, compiled_members in zip(plain, compiled, strict=True):
        for a, b in zip(plain_members, compiled_members, strict=True):
            assert a.best_epoch == b.best_epoch
            for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
                np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-4, atol=1e-6, err_msg=key)
            for x, y in zip(
                kernels(a.model) + embeddings(a.model), kernels(b.model) + embeddings(b.model), strict=True
            ):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a.val_probability, b.val_probability, atol=1e-5)


def test_epoch_order_is_a_seeded_permutation_per_epoch() -> None:
    order = epoch_order(10, 3, seed=1)
    assert order.shape == (3, 10)
    assert all(sorted(row) == list(range(10)) for row in order)
    assert not np.array_equal(order[0], order[1])
    np.testing.assert_array_equal(order, epoch_order(10, 3, seed=1))


def assert_same_training(
    member, model, history, best_epoch, table: Table, keys=("loss", "val_loss", "accuracy")
) -> None:
    assert member.best_epoch == best_epoch
    for key in keys:
        np.testing.assert_allclose(member.history[key], history[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for packed_kernel, alone in zip(kernels(member.model), kernels(model), strict=True):
        np.testing.assert_allclose(packed_kernel, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(member.val_probability, predict_frame(model, table.prep, table.val), atol=1e-5)


@pytest.mark.parametrize("patience", [0, 2])
def test_dropout_member_at_rate_zero_matches_keras_fit_in_a_pack_of_rates(patience: int) -> None:
    table = numeric()
    rates = [0.0, 0.3, 0.5]
    members = packed(table, [0.0] * len(rates), "dropout", patience, dropout_rates=rates)
    model, history, best_epoch = independent_fit(table, 0.0, "l2", patience)
    assert_same_training(members[0], model, history, best_epoch, table)
    # The other members really trained with dropout: the same start and batches, other weights.
    for member in members[1:]:
        assert not np.allclose(kernels(member.model)[0], kernels(members[0].model)[0], atol=1e-3)
        # and the unpacked member carries its rate, which is inert when it predicts
        (layer, *_) = [layer for layer in member.model.layers if layer.name.startswith("dropout_")]
        assert layer.rate in rates[1:]
        np.testing.assert_allclose(
            member.val_probability, predict_frame(member.model, table.prep, table.val), atol=1e-5
        )


def test_dropout_masks_are_per_member_seeded_and_keep_one_minus_p() -> None:
    dropout = _Dropout([0.0, 0.25, 0.3, 0.6], seeds=[7] * 4)
    first, second = (np.asarray(m) for m in dropout.masks([10, 10], 512, epoch=0, step=3))
    again = np.asarray(dropout.masks([10, 10], 512, epoch=0, step=3)[0])
    np.testing.assert_array_equal(first, again)  # seeded
    assert not np.array_equal(first, np.asarray(dropout.masks([10, 10], 512, epoch=0, step=4)[0]))  # a new step
    assert not np.array_equal(first, second)  # a new layer
    np.testing.assert_array_equal(first[0], 1.0)  # rate 0: nothing dropped, nothing scaled
    assert np.mean((first[1] > 0) == (first[2] > 0)) < 0.9  # members draw their own masks
    # A member's masks are its own, whoever shares the pack: a chunk of one trains the same point.
    alone = np.asarray(_Dropout([0.3], seeds=[7]).masks([10, 10], 512, epoch=0, step=3)[0])
    np.testing.assert_array_equal(alone[0], first[2])
    for g, rate in enumerate(dropout.rates):
        kept = first[g] > 0
        assert kept.mean() == pytest.approx(1 - rate, abs=0.03)
        np.testing.assert_allclose(first[g][kept], 1 / (1 - rate), rtol=1e-6)


def _training_mode_losses_packed(table: Table, rate: float, draws: int) -> np.ndarray:
    import tensorflow as tf

    (train, y), _ = table.encoded()
    reference = build_model(table.prep, lam=0.0, learning_rate=1e-2, seed=SEED)
    stack = _Stack([reference], [table.prep], [1])
    dropout = _Dropout([rate], seeds=[SEED])
    dense, indices, labels = tf.constant(train.dense), tf.constant(train.indices), tf.constant(y)[None]
    losses = []
    for step in range(draws):  # a new mask every step, as in training
        logits = stack.logits([(dense, indices)], dropout.masks(stack.hidden_widths, len(y), epoch=0, step=step))
        losses.append(float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))))
    return np.array(losses)


def _training_mode_losses_keras(table: Table, rate: float, draws: int) -> np.ndarray:
    import keras

    model = build_model(table.prep, lam=0.0, mode="dropout", dropout=rate, learning_rate=1e-2, seed=SEED)
    inputs = preprocessing.model_inputs(table.train, table.prep)
    bce = keras.losses.BinaryCrossentropy()
    return np.array([float(bce(table.y_train, model(inputs, training=True))) for _ in range(draws)])


def test_dropout_member_matches_keras_dropout_in_distribution() -> None:
    """Same weights, many masks: packed and Keras' training-mode losses share mean and spread, unlike no dropout."""
    table = numeric()
    draws = 300
    packed_losses = _training_mode_losses_packed(table, 0.5, draws)
    keras_losses = _training_mode_losses_keras(table, 0.5, draws)
    se = np.sqrt(packed_losses.var(ddof=1) / draws + keras_losses.var(ddof=1) / draws)
    assert abs(packed_losses.mean() - keras_losses.mean()) < 4 * se
    assert packed_losses.std() == pytest.approx(keras_losses.std(), rel=0.25)
    without = _training_mode_losses_packed(table, 0.0, 2)
    assert without.std() == 0.0 and packed_losses.std() > 10 * 1e-6


@functools.cache
def imbalanced() -> Table:
    """One positive in about six rows."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 4)).astype("float32")
    y = (x[:, :1] + 0.7 * x[:, 1:2] + rng.normal(scale=0.8, size=(600, 1)) > 1.4).astype("float32")
    frame = numeric_frame(x)
    return Table(numeric_prep(x[:400]), frame.iloc[:400], y[:400], frame.iloc[400:], y[400:])


def test_balanced_weights_are_n_over_two_n_c() -> None:
    assert class_weights.balanced(np.array([0, 0, 0, 1])) == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert class_weights.for_setting("none", np.array([0, 1])) is None
    with pytest.raises(ValueError, match="class 1 has none"):
        class_weights.balanced(np.array([0, 0]))


def test_weighted_loss_matches_keras_class_weight() -> None:
    patience = 0  # stopping is tested above; here each epoch's weighted loss is compared
    table = imbalanced()
    weights = class_weights.balanced(table.y_train)
    assert weights[1] > 2 * weights[0]  # the case is imbalanced, the weights far from 1
    (member,) = packed(table, [1e-2], "l2", patience, class_weights=weights)
    model, history, best_epoch = independent_fit(table, 1e-2, "l2", patience, class_weight=weights)
    # Keras weights its training metrics too, by Σw rather than the batch size; the loss, every
    # validation metric (never weighted) and the weights themselves must agree.
    assert_same_training(
        member, model, history, best_epoch, table, keys=("loss", "val_loss", "val_accuracy", "val_bce")
    )
    (unweighted,) = packed(table, [1e-2], "l2", patience)
    assert not np.allclose(member.history["loss"], unweighted.history["loss"])


def _recall(y: np.ndarray, probability: np.ndarray) -> float:
    positive = y.ravel() == 1
    return float(np.mean(probability[positive] >= 0.5))


def test_balanced_weights_raise_the_minority_class_recall() -> None:
    table = imbalanced()
    (plain,) = packed(table, [0.0], "l2", patience=0, epochs=20)
    (balanced,) = packed(table, [0.0], "l2", patience=0, epochs=20, class_weights=class_weights.balanced(table.y_train))
    assert _recall(table.y_val, balanced.val_probability) > _recall(table.y_val, plain.val_probability) + 0.1


@functools.cache
def folds() -> list[Table]:
    """Three folds of a mixed table, each with its own preprocessing, as cross-validation gives them.

    Their training rows differ in number (80, 79 and 63: the same five batches of 16 with
    partial last batches of 16, 15 and none... and four batches) and their encodings in
    width: the second fold never sees the colour grey (one one-hot slot fewer), the third
    sees five cities only, so city is one-hot there (a wider matrix, no embedding at all).
    """
    table = mixed_table(rows=320, seed=2)
    frame = table.frame
    frame.loc[80:158, "colour"] = frame.loc[80:158, "colour"].replace("grey", "red")
    frame.loc[160:222, "city"] = [f"city-0{i % 5}" for i in range(63)]
    cuts = [((0, 80), (240, 280)), ((80, 159), (280, 317)), ((160, 223), (223, 240))]
    tables = []
    for (start, stop), (val_start, val_stop) in cuts:
        train, val = table.rows(start, stop), table.rows(val_start, val_stop)
        prep = preprocessing.adapt(train.features, table.schema, one_hot_max=MIXED_ONE_HOT_MAX)
        tables.append(Table(prep, train.features, train.label, val.features, val.label))
    return tables


FOLD_SEEDS = [SEED, SEED + 101, SEED + 202]


def test_the_folds_differ_in_rows_and_encoded_widths() -> None:
    tables = folds()
    assert [len(t.train) for t in tables] == [80, 79, 63]
    assert [len(t.val) for t in tables] == [40, 37, 17]
    assert len({t.prep.dense_width for t in tables}) == 3
    assert [len(t.prep.embedded) for t in tables] == [1, 1, 0]


def packed_folds(tables: list[Table], lams: list[float], mode: str, patience: int, rates=None):
    return train_folds_packed(
        [
            FoldPack(t.prep, *t.encoded(), seed=seed, lams=lams, dropout_rates=rates)
            for t, seed in zip(tables, FOLD_SEEDS, strict=True)
        ],
        mode=mode,
        hidden_units=[10, 10],
        learning_rate=1e-2,
        batch_size=BATCH,
        epochs=EPOCHS,
        patience=patience,
    )


def assert_matches_fit(member, table: Table, lam: float, mode: str, patience: int, seed: int) -> None:
    model, history, best_epoch = independent_fit(table, lam, mode, patience, seed=seed)
    assert member.best_epoch == best_epoch
    assert len(member.history["loss"]) == len(history["loss"])
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(member.history[key], history[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for packed_weight, alone in zip(
        kernels(member.model) + embeddings(member.model), kernels(model) + embeddings(model), strict=True
    ):
        np.testing.assert_allclose(packed_weight, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(member.val_probability, predict_frame(model, table.prep, table.val), atol=1e-5)
    np.testing.assert_allclose(member.train_probability, predict_frame(model, table.prep, table.train), atol=1e-5)


@pytest.mark.parametrize(("mode", "patience"), [("l2", 2), ("decoupled", 0)])
def test_every_member_of_every_fold_matches_its_independent_training_on_its_fold(mode: str, patience: int) -> None:
    tables = folds()
    lams = [0.0, 0.3]
    fits = packed_folds(tables, lams, mode, patience)
    assert [len(members) for members in fits] == [2, 2, 2]
    for table, seed, members in zip(tables, FOLD_SEEDS, fits, strict=True):
        assert len(embeddings(members[0].model)) == len(table.prep.embedded)
        for lam, member in zip(lams, members, strict=True):
            assert_matches_fit(member, table, lam, mode, patience, seed)


def test_a_fold_trains_the_same_packed_with_other_folds_or_alone() -> None:
    """Padding to the widest fold and the other folds' longer epochs leave a fold's members untouched."""
    tables = folds()
    together = packed_folds(tables, [1e-2], "l2", patience=2)
    alone = train_folds_packed(
        [FoldPack(tables[2].prep, *tables[2].encoded(), seed=FOLD_SEEDS[2], lams=[1e-2])],
        mode="l2",
        hidden_units=[10, 10],
        learning_rate=1e-2,
        batch_size=BATCH,
        epochs=EPOCHS,
        patience=2,
    )
    (mine,), (reference,) = together[2], alone[0]
    assert mine.best_epoch == reference.best_epoch
    np.testing.assert_allclose(mine.history["val_loss"], reference.history["val_loss"], rtol=1e-5)
    for a, b in zip(kernels(mine.model), kernels(reference.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_dropout_member_at_rate_zero_matches_keras_fit_on_its_fold() -> None:
    tables = folds()[1:]
    rates = [0.0, 0.5]
    fits = train_folds_packed(
        [
            FoldPack(t.prep, *t.encoded(), seed=seed, lams=[0.0, 0.0], dropout_rates=rates)
            for t, seed in zip(tables, FOLD_SEEDS[1:], strict=True)
        ],
        mode="dropout",
        hidden_units=[10, 10],
        learning_rate=1e-2,
        batch_size=BATCH,
        epochs=EPOCHS,
        patience=0,
    )
    for table, seed, (plain, dropped) in zip(tables, FOLD_SEEDS[1:], fits, strict=True):
        assert_matches_fit(plain, table, 0.0, "l2", 0, seed)
        assert not np.allclose(kernels(dropped.model)[0], kernels(plain.model)[0], atol=1e-3)


def test_folds_with_and_without_validation_rows_cannot_share_a_pack() -> None:
    first, second = folds()[:2]
    (train, validation), (other_train, _) = first.encoded(), second.encoded()
    with pytest.raises(ValueError, match="every fold of a packed training has validation rows or none"):
        train_folds_packed(
            [
                FoldPack(first.prep, train, validation, seed=1, lams=[0.0]),
                FoldPack(second.prep, other_train, None, seed=2, lams=[0.0]),
            ],
            mode="l2",
            hidden_units=[10, 10],
            learning_rate=1e-2,
            batch_size=BATCH,
            epochs=1,
            patience=0,
        )
