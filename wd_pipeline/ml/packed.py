"""Train many (fold, λ) of one mode at once: the grid and its folds packed into one set of stacked weights.

The reference network has about 400 weights, so Keras' ``fit`` spends nearly all its time in
per-step Python overhead. Here G members share each step: every kernel gets a leading member
axis, the loss is the *sum* of the members' losses, and a whole epoch (its steps, then the
validation pass) runs inside one ``tf.function``, traced once per training
(:func:`_compiled_epoch`) and XLA-compiled when the training is long enough to repay it.
Members of one fold (one per λ) share that fold's batch; each fold brings its own rows,
preprocessing, seed and batch order (:class:`FoldPack`), so a member sees exactly the
batches of its own fold. Because the members share no weights, each member's gradient is
exactly the gradient of its own loss, and Adam is elementwise (with a step count per member,
:class:`_Adam`), so every member follows the same trajectory as the model trained alone on
its fold with the same seed and batches, up to float rounding. ``tests/ml/test_packed.py``
checks that against independent ``model.fit`` runs, with folds of unequal sizes and encoded
widths. One exception: for an embedding's sparse gradient, Keras' Adam adds each looked-up
row's squared gradients separately (Σg² instead of (Σg)² when a row occurs twice in a
batch); the packed grid applies textbook Adam to the dense gradient, which is what the
test's reference fit is made to use.

Early stopping is per member: the epoch loop runs until every member has run out of
patience, and each member keeps the weights of its own best epoch, as
``EarlyStopping(restore_best_weights=True)`` would. Members are then unpacked into ordinary
reference models, so saving, serving and the registry never see the packing.

Dropout (mode ``dropout``) is per member too: each member has its own rate, and each step
draws an independent mask for every member, row and hidden unit from a stateless generator
seeded by (its fold's seed, hidden layer, rate, epoch, step), so a training is reproducible and does not
depend on which other members share its pack. Survivors are
scaled by 1 / (1 − p), as Keras' ``Dropout`` does; the validation pass and the final
probabilities run without dropout. A member at rate 0 skips nothing and matches the
network trained without dropout exactly. The masks cannot equal Keras' own (its generator
is seeded per layer, not per step), so ``test_packed.py`` checks dropout members against
Keras statistically.

Class weights (``--class-weight balanced``) weight each training row's loss by its class's
weight, averaged over the batch as Keras' ``class_weight`` does; validation metrics stay
unweighted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wd_pipeline.ml.host_arrays import as_tensor
from wd_pipeline.ml.network import EMBEDDING_PREFIX, MODES, PREDICT_ROWS, build_model
from wd_pipeline.ml.preprocessing import EMBEDDING_DIM

if TYPE_CHECKING:
    from wd_pipeline.ml.preprocessing import Encoded, Preprocessing

_log = logging.getLogger(__name__)

HIDDEN = "hidden"
# Below this many optimiser steps (epochs × the longest fold's batches) the epoch function runs
# as a plain graph: XLA's compilation costs more CPU than it saves on so few steps.
XLA_MIN_STEPS = 500


@dataclass
class MemberFit:
    """One unpacked member: its Keras model, per-epoch history, best epoch (1-based) and its predictions.

    ``train_probability`` / ``val_probability`` are the member's probabilities on the rows it
    trained and validated on, computed for all members of its fold in one pass over the encoded rows.
    """

    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    train_probability: np.ndarray
    val_probability: np.ndarray | None


@dataclass(frozen=True)
class FoldPack:
    """One fold's share of a packed training: what it adapted, its rows, its seed and its members.

    ``train`` and ``validation`` are (encoded rows, labels of shape (rows, 1)); ``lams`` and
    ``dropout_rates`` give one member each (rates default to 0); ``class_weights`` maps a
    label (0, 1) to the weight of its rows in this fold's training loss. The seed fixes the
    fold's initial weights, its batches and its members' dropout masks.
    """

    prep: Preprocessing
    train: tuple[Encoded, np.ndarray]
    validation: tuple[Encoded, np.ndarray] | None
    seed: int
    lams: Sequence[float]
    dropout_rates: Sequence[float] | None = None
    class_weights: Mapping[int, float] | None = None

    @property
    def rates(self) -> list[float]:
        return [
            float(rate) for rate in (self.dropout_rates if self.dropout_rates is not None else [0.0] * len(self.lams))
        ]


def train_packed(
    prep: Preprocessing,
    train: tuple[Encoded, np.ndarray],
    validation: tuple[Encoded, np.ndarray] | None,
    *,
    lams: Sequence[float],
    mode: str,
    hidden_units: Sequence[int],
    learning_rate: float,
    seed: int,
    batch_size: int,
    epochs: int,
    patience: int,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    dropout_rates: Sequence[float] | None = None,
    class_weights: Mapping[int, float] | None = None,
) -> list[MemberFit]:
    """Train one member per λ of a single fold on the same batches; returns them in the order of ``lams``."""
    fold = FoldPack(prep, train, validation, seed, lams, dropout_rates, class_weights)
    (members,) = train_folds_packed(
        [fold],
        mode=mode,
        hidden_units=hidden_units,
        learning_rate=learning_rate,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        on_epoch=on_epoch,
    )
    return members


def train_folds_packed(
    folds: Sequence[FoldPack],
    *,
    mode: str,
    hidden_units: Sequence[int],
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> list[list[MemberFit]]:
    """Train every member of every fold as one packed model; returns each fold's members in the order of its ``lams``.

    Each member draws its batches from its own fold's training rows, validates on its own
    fold's rows and stops on its own. The members come back as full networks, input layers
    from their fold's ``prep`` included. ``on_epoch`` is called after every epoch with its
    0-based number and each metric's per-member values (folds in order, then their members).
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown weight-decay mode {mode!r}; use one of {MODES}")
    if not folds or any(not fold.lams for fold in folds):
        raise ValueError("every fold of a packed training needs at least one member")
    if len({fold.validation is None for fold in folds}) > 1:
        raise ValueError("either every fold of a packed training has validation rows or none has")
    for fold in folds:
        rates = fold.rates
        if len(rates) != len(fold.lams) or any(not 0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"need one dropout rate in [0, 1) per member, got {rates} for {len(fold.lams)} member(s)")
    lams = [float(lam) for fold in folds for lam in fold.lams]
    rates = [rate for fold in folds for rate in fold.rates]
    stack = _Stack(
        [
            build_model(
                fold.prep, lam=0.0, mode="l2", hidden_units=hidden_units, learning_rate=learning_rate, seed=fold.seed
            )
            for fold in folds
        ],
        [fold.prep for fold in folds],
        [len(fold.lams) for fold in folds],
    )
    lam_vector = tf.constant(lams, dtype=tf.float32)
    penalty_coef = lam_vector / 2.0 if mode == "l2" else tf.zeros_like(lam_vector)
    decay_coef = learning_rate * lam_vector if mode == "decoupled" else tf.zeros_like(lam_vector)
    seeds = [fold.seed for fold in folds for _ in fold.lams]
    orders = _padded_orders(folds, epochs, batch_size)
    steps = epochs * -(-max(len(fold.train[0]) for fold in folds) // batch_size)
    xla = steps >= XLA_MIN_STEPS
    run_epoch = _compiled_epoch(
        stack,
        _Adam(stack, learning_rate),
        folds,
        penalty_coef=penalty_coef,
        decay_coef=decay_coef,
        batch_size=batch_size,
        dropout=_Dropout(rates, seeds) if any(rates) else None,
        xla=xla,
    )

    validated = folds[0].validation is not None
    keys = ("loss", "bce", "accuracy") + (("val_loss", "val_bce", "val_accuracy") if validated else ())
    history: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    tracker = _BestTracker(len(lams), patience if validated else 0, stack)
    for epoch, order in enumerate(orders):
        metrics = {key: value.numpy() for key, value in run_epoch(order, tf.constant(epoch)).items()}
        for key in keys:
            history[key].append(metrics[key])
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if validated and tracker.update(epoch, metrics["val_bce"]):
            break
    _log.debug(
        "packed training: %d epoch(s), epoch function traced %d time(s), %s",
        len(history["loss"]),
        run_epoch.experimental_get_tracing_count(),
        "XLA-compiled" if xla else "as a plain graph",
    )
    tracker.restore()
    fits: list[list[MemberFit]] = []
    for f, fold in enumerate(folds):
        train_probability = stack.probabilities(f, fold.train[0])
        val_probability = stack.probabilities(f, fold.validation[0]) if fold.validation is not None else None
        members = []
        for i, (lam, rate) in enumerate(zip(fold.lams, fold.rates, strict=True)):
            g = stack.starts[f] + i
            members.append(
                MemberFit(
                    model=stack.unpack(
                        g,
                        fold.prep,
                        lam=float(lam),
                        mode=mode,
                        dropout=rate,
                        hidden_units=hidden_units,
                        learning_rate=learning_rate,
                        seed=fold.seed,
                    ),
                    history={
                        key: [float(v[g]) for v in series[: tracker.epochs_run(g, len(series))]]
                        for key, series in history.items()
                    },
                    best_epoch=tracker.best_epoch(g, len(history["loss"])),
                    train_probability=train_probability[i],
                    val_probability=val_probability[i] if val_probability is not None else None,
                )
            )
        fits.append(members)
    return fits


def _padded_orders(folds: Sequence[FoldPack], epochs: int, batch_size: int) -> Iterator[np.ndarray]:
    """Every fold's row order of each epoch in turn (as :func:`epoch_order` draws them), cut to the same number
    of batches: (F, S·B) per epoch.

    A fold with fewer rows than the longest gets padding rows (index 0) that the epoch masks
    out: its members see exactly their own batches, and no update once their epoch is over.
    Drawn an epoch at a time, so no (epochs × rows) array is held.
    """
    sizes = [len(fold.train[0]) for fold in folds]
    padded = -(-max(sizes) // batch_size) * batch_size
    generators = [np.random.default_rng(fold.seed) for fold in folds]
    for _ in range(epochs):
        orders = np.zeros((len(folds), padded), dtype=np.int32)
        for f, (rng, rows) in enumerate(zip(generators, sizes, strict=True)):
            orders[f, :rows] = rng.permutation(rows)
        yield orders


def row_weights(labels: np.ndarray, class_weights: Mapping[int, float]) -> np.ndarray:
    """Each row's weight in the training loss, from its label's class weight: shaped like ``labels``."""
    lookup = np.vectorize(lambda label: class_weights.get(int(label), 1.0), otypes=[np.float32])
    return lookup(np.asarray(labels)).astype(np.float32)


@dataclass(frozen=True)
class _Dropout:
    """Per-member dropout rates and the seeds of their masks (a member's fold's seed).

    A member's masks are seeded by its own seed and rate, not its place in the pack, so a
    grid point trains the same whether its chunk holds the whole grid or that point alone.
    """

    rates: list[float]
    seeds: list[int]

    def masks(self, widths: Sequence[int], batch: int, epoch: Any, step: Any) -> list[Any]:
        """For each hidden layer a (G, batch, width) multiplier: 0 for a dropped unit, 1 / (1 − p) for a kept one."""
        import tensorflow as tf

        rates = tf.constant(self.rates, dtype=tf.float32)[:, None, None]
        scale = 1.0 / (1.0 - rates)
        counter = tf.cast(epoch, tf.int64) * 1_000_003 + tf.cast(step, tf.int64)
        masks = []
        for layer, width in enumerate(widths):
            uniform = tf.stack(
                [
                    tf.random.stateless_uniform(
                        [batch, width],
                        seed=tf.stack([tf.constant(self._stream(seed, layer, rate), tf.int64), counter]),
                    )
                    for rate, seed in zip(self.rates, self.seeds, strict=True)
                ]
            )
            masks.append(tf.cast(uniform >= rates, tf.float32) * scale)
        return masks

    @staticmethod
    def _stream(seed: int, layer: int, rate: float) -> int:
        """The first half of a mask's seed: one stream per (seed, hidden layer, rate)."""
        return (seed * 16 + layer) * 1_000_000 + round(rate * 1_000_000)


def epoch_order(rows: int, epochs: int, seed: int) -> np.ndarray:
    """Row order of every epoch, (epochs, rows): shared by packed and one-model training so both see the same batches."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(rows) for _ in range(epochs)])


def epoch_batches(inputs: dict[str, np.ndarray], y: np.ndarray, epochs: int, seed: int, batch_size: int) -> Any:
    """A ``tf.data`` pipeline of every epoch's batches of named raw inputs in :func:`epoch_order` (for ``model.fit``)."""
    import tensorflow as tf

    rows = len(y)
    order = epoch_order(rows, epochs, seed)
    x_all = {name: tf.constant(value) for name, value in inputs.items()}
    y_all = tf.constant(y)
    return (
        tf.data.Dataset.from_tensor_slices(order)
        .flat_map(lambda rows: tf.data.Dataset.from_tensor_slices(rows).batch(batch_size))
        .map(lambda rows: ({name: tf.gather(value, rows) for name, value in x_all.items()}, tf.gather(y_all, rows)))
        .prefetch(tf.data.AUTOTUNE)
    )


@dataclass(frozen=True)
class _FoldRows:
    """One fold's rows as tensors the compiled epoch reads (sharing the encoded arrays' buffers: ``host_arrays``)."""

    dense: Any
    indices: Any
    y: Any
    weights: Any
    rows: int


def _constants(part: tuple[Encoded, np.ndarray], class_weights: Mapping[int, float] | None = None) -> _FoldRows:
    import tensorflow as tf

    encoded, y = part
    weights = row_weights(y, class_weights) if class_weights else np.ones_like(y, dtype=np.float32)
    return _FoldRows(
        as_tensor(encoded.dense), as_tensor(encoded.indices), tf.constant(y), tf.constant(weights), len(encoded)
    )


class _Adam:
    """Keras' Adam with a step count per member: a member whose fold has run out of batches skips the step.

    Keras counts steps once per optimiser, and its bias correction depends on that count; a
    member of a smaller fold must not advance it, so the count, moments and update are
    masked per member. The arithmetic is Keras' own (``keras.optimizers.Adam.update_step``).
    """

    def __init__(self, stack: _Stack, learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999) -> None:
        import keras

        members, width = (int(n) for n in stack.theta.shape)
        self.learning_rate, self.beta_1, self.beta_2, self.epsilon = learning_rate, beta_1, beta_2, 1e-7
        self.m = keras.Variable(np.zeros((members, width), np.float32), name="packed_m")
        self.v = keras.Variable(np.zeros((members, width), np.float32), name="packed_v")
        self.steps = keras.Variable(np.zeros((members, 1), np.float32), name="packed_steps")

    def apply(self, gradient: Any, theta: Any, active: Any) -> None:
        """One update of the members where ``active`` (G, 1) is true."""
        import tensorflow as tf

        steps = self.steps.value + tf.cast(active, tf.float32)
        m = self.m.value + (gradient - self.m.value) * (1 - self.beta_1)
        v = self.v.value + (tf.square(gradient) - self.v.value) * (1 - self.beta_2)
        alpha = (
            self.learning_rate
            * tf.sqrt(1 - tf.pow(self.beta_2, tf.maximum(steps, 1.0)))
            / (1 - tf.pow(self.beta_1, tf.maximum(steps, 1.0)))
        )
        self.steps.assign(steps)
        self.m.assign(tf.where(active, m, self.m.value))
        self.v.assign(tf.where(active, v, self.v.value))
        theta.assign(tf.where(active, theta.value - m * alpha / (tf.sqrt(v) + self.epsilon), theta.value))


def _compiled_epoch(
    stack: _Stack,
    optimizer: _Adam,
    folds: Sequence[FoldPack],
    *,
    penalty_coef: Any,
    decay_coef: Any,
    batch_size: int,
    dropout: _Dropout | None = None,
    xla: bool = True,
) -> Any:
    """One epoch, every training step and then the validation pass, as one function, XLA-compiled if ``xla``.

    A step of this tiny network costs far less arithmetic than graph-executor dispatch; inside
    an XLA while-loop that dispatch is gone, but compiling costs seconds of CPU, which a short
    training (a small table, few epochs) never earns back. XLA needs static shapes, so every
    step takes ``batch_size`` row indices per fold, and a row mask per fold keeps what that fold
    really has: its partial last batch, or nothing once its epoch is over (its members then skip
    the step: no decay, no Adam update). The losses are means over the kept rows, so each member
    sees the batches ``model.fit`` over :func:`epoch_batches` gives its fold. Rows are gathered
    inside, from each fold's arrays held once as constants. The orders' shape is the same every
    epoch, so the function is traced (and compiled) once.
    """
    import tensorflow as tf

    train = [_constants(fold.train, fold.class_weights) for fold in folds]
    held_out = [_constants(fold.validation) for fold in folds if fold.validation is not None]
    members = int(penalty_coef.shape[0])
    sizes = tf.constant([part.rows for part in train], tf.int32)
    member_fold = np.repeat(np.arange(len(folds)), stack.counts)
    member_rows = tf.constant([float(train[f].rows) for f in member_fold], tf.float32)
    positions = tf.range(batch_size)

    def step(rows: Any, epoch: Any, index: Any) -> Any:
        """One optimiser step on the batches ``rows`` (F, B): every member's loss, bce and accuracy (3, G), summed over its rows."""
        kept = tf.clip_by_value(sizes - index * batch_size, 0, batch_size)  # (F,)
        row_mask = [tf.cast(positions < kept[f], tf.float32)[:, None] for f in range(len(train))]
        batches = [(tf.gather(part.dense, rows[f]), tf.gather(part.indices, rows[f])) for f, part in enumerate(train)]
        labels = [tf.gather(part.y, rows[f]) for f, part in enumerate(train)]
        weights = [tf.gather(part.weights, rows[f]) * row_mask[f] for f, part in enumerate(train)]
        counts = tf.cast(tf.gather(kept, member_fold), tf.float32)  # (G,)
        active = counts > 0
        masks = dropout.masks(stack.hidden_widths, batch_size, epoch, index) if dropout else None
        with tf.GradientTape() as tape:
            logits = stack.logits(batches, masks)
            bce = _per_member(_bce_sums, labels, logits, weights, stack.counts) / tf.maximum(counts, 1.0)
            penalty = penalty_coef * stack.hidden_squared_norms()
            total = tf.reduce_sum(tf.where(active, bce + penalty, 0.0))
        grads = tape.gradient(total, stack.theta.value)
        # Decay before the update, as Keras' AdamW does.
        stack.decay_hidden(tf.where(active, decay_coef, 0.0))
        optimizer.apply(grads, stack.theta, active[:, None])
        hits = _per_member(_hit_sums, labels, logits, row_mask, stack.counts)
        return tf.stack([(bce + penalty) * counts, bce * counts, hits])

    # Without autograph: the loops are TensorFlow loops already, so the first trace in a process
    # does not rewrite this function and everything it calls from their source first.
    @tf.function(jit_compile=xla, autograph=False)
    def run_epoch(orders: Any, epoch: Any) -> dict[str, Any]:
        steps = int(orders.shape[1]) // batch_size
        batches = tf.reshape(orders, [len(train), steps, batch_size])

        def next_step(index: Any, sums: Any) -> tuple[Any, Any]:
            return index + 1, sums + step(batches[:, index], epoch, index)

        start = (tf.constant(0), tf.zeros([3, members]))  # row-weighted sums, as Keras reports
        _, sums = tf.while_loop(lambda index, _: index < steps, next_step, start, maximum_iterations=steps)
        means = sums / member_rows
        metrics = {"loss": means[0], "bce": means[1], "accuracy": means[2]}
        if held_out:
            val_bce, val_accuracy = [], []
            for f, part in enumerate(held_out):
                sums = _validation_sums(stack, f, part)
                val_bce.append(sums[0] / part.rows)
                val_accuracy.append(sums[1] / part.rows)
            val_bce = tf.concat(val_bce, axis=0)
            penalty = penalty_coef * stack.hidden_squared_norms()
            metrics.update(val_loss=val_bce + penalty, val_bce=val_bce, val_accuracy=tf.concat(val_accuracy, axis=0))
        return metrics

    return run_epoch


def _validation_sums(stack: _Stack, f: int, part: _FoldRows) -> Any:
    """Fold ``f``'s members on its validation rows, in slices of :data:`PREDICT_ROWS`: (2, G_f) bce and hit sums.

    One pass over all rows at once would hold a (G_f, rows, hidden) activation per layer, a
    few times the encoded rows themselves; slices bound that. The slices have static shapes
    for XLA: whole slices in a loop, then the remainder.
    """
    import tensorflow as tf

    def sums(start: Any, size: int) -> Any:
        dense = tf.slice(part.dense, [start, 0], [size, part.dense.shape[1]])
        indices = tf.slice(part.indices, [start, 0], [size, part.indices.shape[1]])
        y = tf.slice(part.y, [start, 0], [size, 1])
        weights = tf.slice(part.weights, [start, 0], [size, 1])
        logits = stack.fold_logits(f, dense, indices)
        return tf.stack([_bce_sums(y, logits, weights), _hit_sums(y, logits, weights)])

    whole = part.rows // PREDICT_ROWS
    total = tf.zeros([2, stack.counts[f]])
    if whole:  # traced only when a whole slice fits: its static size must not exceed the rows

        def next_slice(index: Any, total: Any) -> tuple[Any, Any]:
            return index + 1, total + sums(index * PREDICT_ROWS, PREDICT_ROWS)

        start = (tf.constant(0), total)
        _, total = tf.while_loop(lambda index, _: index < whole, next_slice, start, maximum_iterations=whole)
    if part.rows % PREDICT_ROWS:
        total += sums(whole * PREDICT_ROWS, part.rows % PREDICT_ROWS)
    return total


def _member_product(h: Any, kernel: Any, *, small_batch: bool) -> Any:
    """(G, B, F) × (G, F, H) → (G, B, H): each member's rows through its own kernel.

    A training batch is a few dozen rows: a batched matrix product then runs G tiny
    products one after the other, which on a CPU costs about twice as much per step as one
    fused multiply-and-sum over a (G, B, F, H) intermediate. For many rows (validation,
    predictions) that intermediate would be large, and the batched product is the cheaper.
    """
    import tensorflow as tf

    if small_batch:
        return tf.reduce_sum(h[:, :, :, None] * kernel[:, None, :, :], axis=2)
    return tf.einsum("gbf,gfh->gbh", h, kernel)


def _per_member(
    measure: Callable[[Any, Any, Any], Any], labels: list[Any], logits: Any, weights: list[Any], counts: Sequence[int]
) -> Any:
    """``measure`` of each fold's members on that fold's batch, joined into one (G,) vector."""
    import tensorflow as tf

    parts = tf.split(logits, list(counts), axis=0)
    return tf.concat([measure(y, part, w) for y, part, w in zip(labels, parts, weights, strict=True)], axis=0)


def _bce_sums(y: Any, logits: Any, weights: Any) -> Any:
    """Σ over rows of weighted binary cross-entropy per member, from logits: (G, B, 1) → (G,); ``weights`` (B, 1)."""
    import tensorflow as tf

    labels = tf.broadcast_to(y[None, :, :], tf.shape(logits))
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(losses * weights[None, :, :], axis=[1, 2])


def _hit_sums(y: Any, logits: Any, mask: Any) -> Any:
    """Correctly classified rows per member, counting only rows where ``mask`` (B, 1) is non-zero."""
    import tensorflow as tf

    predicted = tf.cast(tf.sigmoid(logits) > 0.5, tf.float32)
    hits = tf.cast(tf.equal(predicted, y[None, :, :]), tf.float32) * tf.cast(mask[None, :, :] > 0, tf.float32)
    return tf.reduce_sum(hits, axis=[1, 2])


class _Stack:
    """All trained weights of every member, as one (G, P) variable, members grouped by fold.

    One flat variable per stack instead of several per network cuts the ops of every step
    (Adam's update becomes one set of elementwise ops); Adam is elementwise, so the
    arithmetic per weight is unchanged. The members of a fold start from that fold's
    reference network. The pieces are the embedding tables (if any), then each Dense layer's
    kernel and bias; the input layers hold no trained weights and run once, before packing
    (``encode``).

    Folds adapt their own preprocessing, so their encoded widths and embedding tables may
    differ. Each piece is laid out at the widest fold's size: the first kernel has rows for
    the widest encoded matrix, then for the most embedded columns; the stacked tables have
    the most rows any fold needs. A fold uses only its own leading rows of each block; the
    rest of its members' weights start at zero and stay there: no input reaches them, so
    their gradient is exactly zero, Adam moves a weight with zero gradient and zero moments
    by 0 / (0 + ε) = 0, decay shrinks zero to zero and the penalty adds nothing. Each fold's
    inputs keep their own width and meet only their own rows (:meth:`_first_layer`).
    """

    def __init__(self, references: Sequence[Any], preps: Sequence[Preprocessing], counts: Sequence[int]) -> None:
        import keras

        self.counts = [int(n) for n in counts]
        self.starts = np.cumsum([0, *self.counts[:-1]]).tolist()
        self.dense_widths = [prep.dense_width for prep in preps]
        self.dense_width = max(self.dense_widths)
        tables = [
            [ref.get_layer(f"{EMBEDDING_PREFIX}{i + 1}") for i in range(len(prep.embedded))]
            for ref, prep in zip(references, preps, strict=True)
        ]
        self.embedded = [len(fold_tables) for fold_tables in tables]
        self.table_rows = [[int(table.input_dim) for table in fold_tables] for fold_tables in tables]
        self.offsets = [np.cumsum([0, *rows])[: len(rows)].astype(np.int32) for rows in self.table_rows]
        self.has_tables = max(self.embedded) > 0
        self.dim = EMBEDDING_DIM
        dense_layers = [[layer for layer in ref.layers if isinstance(layer, keras.layers.Dense)] for ref in references]
        self.dense_names = [layer.name for layer in dense_layers[0]]
        self.hidden_widths = [int(layer.units) for layer in dense_layers[0][:-1]]
        per_fold = [
            self._fold_pieces(fold_tables, layers, f)
            for f, (fold_tables, layers) in enumerate(zip(tables, dense_layers, strict=True))
        ]
        self.shapes = [piece.shape for piece in per_fold[0]]
        self.bounds = np.cumsum([0] + [piece.size for piece in per_fold[0]]).tolist()
        flats = [np.concatenate([piece.ravel() for piece in pieces]) for pieces in per_fold]
        initial = np.concatenate(
            [np.repeat(flat[None, :], count, axis=0) for flat, count in zip(flats, self.counts, strict=True)]
        )
        self.theta = keras.Variable(initial, name="packed_parameters")
        first_dense = 1 if self.has_tables else 0
        penalized = [0] if self.has_tables else []
        penalized += [first_dense + 2 * i for i, name in enumerate(self.dense_names) if name.startswith(HIDDEN)]
        mask = np.zeros(flats[0].size, dtype=np.float32)
        for piece in penalized:
            mask[self.bounds[piece] : self.bounds[piece + 1]] = 1.0
        self.hidden_mask = mask

    def _fold_pieces(self, tables: Sequence[Any], layers: Sequence[Any], f: int) -> list[np.ndarray]:
        """One fold's initial weights in the common (widest) layout, zeros where the fold has no input."""
        pieces = []
        if self.has_tables:
            stacked = np.zeros((max(sum(rows) for rows in self.table_rows), self.dim), np.float32)
            if tables:
                own = np.concatenate([np.asarray(table.embeddings) for table in tables])
                stacked[: len(own)] = own
            pieces.append(stacked)
        kernel = np.asarray(layers[0].kernel)
        first = np.zeros((self.dense_width + max(self.embedded) * self.dim, kernel.shape[1]), np.float32)
        width = self.dense_widths[f]
        first[:width] = kernel[:width]
        first[self.dense_width : self.dense_width + kernel.shape[0] - width] = kernel[width:]
        pieces += [first, np.asarray(layers[0].bias)]
        pieces += [np.asarray(w) for layer in layers[1:] for w in (layer.kernel, layer.bias)]
        return pieces

    def _pieces(self, members: slice | None = None) -> list[Any]:
        import tensorflow as tf

        theta = self.theta.value if members is None else self.theta.value[members]
        count = tf.shape(theta)[0]
        return [
            tf.reshape(theta[:, start:end], tf.concat([[count], shape], axis=0))
            for start, end, shape in zip(self.bounds[:-1], self.bounds[1:], self.shapes, strict=True)
        ]

    def _members(self, f: int) -> slice:
        return slice(self.starts[f], self.starts[f] + self.counts[f])

    def _first_layer(self, f: int, pieces: list[Any], dense: Any, indices: Any) -> Any:
        """Fold ``f``'s (B, F_f) encoded rows and (B, k_f) lookup indices → its members' first pre-activations (G_f, B, H)."""
        import tensorflow as tf

        layers = pieces[1:] if self.has_tables else pieces
        first, bias = layers[0], layers[1]
        z = bias[:, None, :]
        width = self.dense_widths[f]
        if width:
            z = z + tf.einsum("bf,gfh->gbh", dense, first[:, :width])
        if self.embedded[f]:
            # One gather for every embedded column: a gather per column (or a one-hot product)
            # cost several times more per step under XLA on a CPU.
            looked_up = tf.gather(pieces[0], indices + self.offsets[f], axis=1)  # (G_f, B, columns, dim)
            flat = tf.reshape(looked_up, tf.concat([tf.shape(looked_up)[:2], [-1]], axis=0))
            block = first[:, self.dense_width : self.dense_width + self.embedded[f] * self.dim]
            z = z + tf.einsum("gbd,gdh->gbh", flat, block)
        return z

    def _rest(self, pieces: list[Any], z: Any, masks: Sequence[Any] | None, *, small_batch: bool = False) -> Any:
        """From the first pre-activations to the (G, B, 1) logits (``small_batch``: see :func:`_member_product`)."""
        import tensorflow as tf

        layers = pieces[1:] if self.has_tables else pieces
        kernels, biases = layers[0::2], layers[1::2]
        h = tf.nn.relu(z)
        if masks:
            h = h * masks[0]
        for layer, (kernel, bias) in enumerate(zip(kernels[1:-1], biases[1:-1], strict=True), start=1):
            h = tf.nn.relu(_member_product(h, kernel, small_batch=small_batch) + bias[:, None, :])
            if masks:
                h = h * masks[layer]
        return _member_product(h, kernels[-1], small_batch=small_batch) + biases[-1][:, None, :]

    def logits(self, batches: Sequence[tuple[Any, Any]], masks: Sequence[Any] | None = None) -> Any:
        """One equally long batch per fold, (encoded rows, lookup indices) → (G, B, 1) logits of every member.

        ``masks`` (one (G, B, width) multiplier per hidden layer) applies dropout; without
        them the network runs as it predicts.
        """
        import tensorflow as tf

        pieces = self._pieces()
        z = tf.concat(
            [self._first_layer(f, [p[self._members(f)] for p in pieces], *batch) for f, batch in enumerate(batches)],
            axis=0,
        )
        return self._rest(pieces, z, masks, small_batch=True)

    def fold_logits(self, f: int, dense: Any, indices: Any) -> Any:
        """Fold ``f``'s members on its rows, without dropout: (G_f, rows, 1)."""
        pieces = self._pieces(self._members(f))
        return self._rest(pieces, self._first_layer(f, pieces, dense, indices), None)

    def probabilities(self, f: int, rows: Encoded) -> np.ndarray:
        """(G_f, rows) probabilities of fold ``f``'s members, in slices of :data:`PREDICT_ROWS` rows."""
        import tensorflow as tf

        parts = [
            tf.sigmoid(
                self.fold_logits(
                    f, rows.dense[start : start + PREDICT_ROWS], rows.indices[start : start + PREDICT_ROWS]
                )
            ).numpy()[:, :, 0]
            for start in range(0, len(rows), PREDICT_ROWS)
        ]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.counts[f], 0), dtype=np.float32)

    def hidden_squared_norms(self) -> Any:
        """Σ w² of the penalised weights (embedding tables and hidden kernels), per member: (G,)."""
        import tensorflow as tf

        return tf.reduce_sum(tf.square(self.theta.value) * self.hidden_mask, axis=1)

    def decay_hidden(self, coef: Any) -> None:
        theta = self.theta.value
        self.theta.assign(theta - theta * coef[:, None] * self.hidden_mask[None, :])

    def snapshot(self) -> list[np.ndarray]:
        return [np.array(self.theta.value)]

    def load(self, values: list[np.ndarray]) -> None:
        self.theta.assign(values[0])

    def fold_of(self, g: int) -> int:
        return int(np.searchsorted(self.starts, g, side="right") - 1)

    def unpack(
        self,
        g: int,
        prep: Preprocessing,
        *,
        lam: float,
        mode: str,
        dropout: float,
        hidden_units: Sequence[int],
        learning_rate: float,
        seed: int,
    ) -> Any:
        """Member ``g`` as an ordinary reference model (its own regulariser / optimiser for λ, its dropout layers)."""
        model = build_model(
            prep,
            lam=lam,
            mode=mode,
            dropout=dropout,
            hidden_units=hidden_units,
            learning_rate=learning_rate,
            seed=seed,
        )
        f = self.fold_of(g)
        flat = np.array(self.theta.value[g])
        pieces = [
            flat[start:end].reshape(shape)
            for start, end, shape in zip(self.bounds[:-1], self.bounds[1:], self.shapes, strict=True)
        ]
        if self.has_tables:
            stacked = pieces.pop(0)
            for i, (offset, rows) in enumerate(zip(self.offsets[f], self.table_rows[f], strict=True)):
                model.get_layer(f"{EMBEDDING_PREFIX}{i + 1}").embeddings.assign(stacked[offset : offset + rows])
        width, embedded = self.dense_widths[f], self.embedded[f] * self.dim
        pieces[0] = np.concatenate([pieces[0][:width], pieces[0][self.dense_width : self.dense_width + embedded]])
        dense = [w for name in self.dense_names for w in (model.get_layer(name).kernel, model.get_layer(name).bias)]
        for weight, piece in zip(dense, pieces, strict=True):
            weight.assign(piece)
        return model


class _BestTracker:
    """Per-member early stopping with Keras' semantics: strict improvement, best weights kept."""

    def __init__(self, members: int, patience: int, stack: _Stack) -> None:
        self.patience = patience
        self.stack = stack
        self.best = np.full(members, np.inf)
        self.best_at = np.zeros(members, dtype=int)
        self.wait = np.zeros(members, dtype=int)
        self.stopped_at = np.full(members, -1)
        self.best_values = stack.snapshot() if patience else None

    def update(self, epoch: int, val_bce: np.ndarray) -> bool:
        """Record one epoch; True when every member has stopped."""
        if not self.patience:
            return False
        active = self.stopped_at < 0
        self.wait[active] += 1
        improved = active & (val_bce < self.best)
        if improved.any():
            current = self.stack.snapshot()
            for best, now in zip(self.best_values, current, strict=True):
                best[improved] = now[improved]
            self.best[improved] = val_bce[improved]
            self.best_at[improved] = epoch
            self.wait[improved] = 0
        stopping = active & ~improved & (self.wait >= self.patience) & (epoch > 0)
        self.stopped_at[stopping] = epoch
        return bool((self.stopped_at >= 0).all())

    def restore(self) -> None:
        if self.patience:
            self.stack.load(self.best_values)

    def epochs_run(self, g: int, total: int) -> int:
        return int(self.stopped_at[g]) + 1 if self.stopped_at[g] >= 0 else total

    def best_epoch(self, g: int, total: int) -> int:
        return int(self.best_at[g]) + 1 if self.patience else total
