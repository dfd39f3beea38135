"""Train many λ of one (mode, fold) at once: the grid packed into one set of stacked weights.

The reference network has about 400 weights, so Keras' ``fit`` spends nearly all its time
in per-step Python overhead. Here G members (one per λ) share each batch: every kernel gets
a leading member axis, the loss is the *sum* of the members' losses, and a whole epoch (its
steps, then the validation pass) runs inside one XLA-compiled ``tf.function``, compiled
once per training (:func:`_compiled_epoch`). Because the members share no weights, each
member's gradient is exactly the gradient of its own loss, and Adam is elementwise, so every
member follows the same trajectory as the model trained alone with the same seed and
batches, up to float rounding. ``tests/ml/test_packed.py`` checks that against
independent ``model.fit`` runs. One exception: for an embedding's sparse gradient, Keras'
Adam adds each looked-up row's squared gradients separately (Σg² instead of (Σg)² when a row
occurs twice in a batch); the packed grid applies textbook Adam to the dense gradient, which
is what the test's reference fit is made to use.

Early stopping is per member: the epoch loop runs until every member has run out of
patience, and each member keeps the weights of its own best epoch, as
``EarlyStopping(restore_best_weights=True)`` would. Members are then unpacked into ordinary
reference models, so saving, serving and the registry never see the packing.

Dropout (mode ``dropout``) is per member too: each member has its own rate, and each step
draws an independent mask for every member, row and hidden unit from a stateless generator
seeded by (seed, hidden layer, rate, epoch, step), so a training is reproducible and does not
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wd_pipeline.ml.network import EMBEDDING_PREFIX, MODES, PREDICT_ROWS, build_model

if TYPE_CHECKING:
    from wd_pipeline.ml.preprocessing import Encoded, Preprocessing

_log = logging.getLogger(__name__)

HIDDEN = "hidden"


@dataclass
class MemberFit:
    """One unpacked member: its Keras model, per-epoch history, best epoch (1-based) and its predictions.

    ``train_probability`` / ``val_probability`` are the member's probabilities on the rows it
    trained and validated on, computed for all members in one pass over the encoded rows.
    """

    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    train_probability: np.ndarray
    val_probability: np.ndarray | None


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
    """Train one member per λ on the same batches of encoded rows; returns them in the order of ``lams``.

    ``train`` and ``validation`` are (encoded rows, labels of shape (rows, 1)); the members
    come back as full networks (input layers from ``prep`` included). ``dropout_rates``
    gives each member its dropout rate (default 0 for all); ``class_weights`` maps a label
    (0, 1) to the weight of its rows in the training loss. ``on_epoch`` is called after every
    epoch with its 0-based number and each metric's per-member values.
    """
    import keras
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown weight-decay mode {mode!r}; use one of {MODES}")
    lams = [float(lam) for lam in lams]
    rates = [float(rate) for rate in (dropout_rates if dropout_rates is not None else [0.0] * len(lams))]
    if len(rates) != len(lams) or any(not 0.0 <= rate < 1.0 for rate in rates):
        raise ValueError(f"need one dropout rate in [0, 1) per member, got {rates} for {len(lams)} member(s)")
    reference = build_model(prep, lam=0.0, mode="l2", hidden_units=hidden_units, learning_rate=learning_rate, seed=seed)
    stack = _Stack(reference, prep, len(lams))
    lam_vector = tf.constant(lams, dtype=tf.float32)
    penalty_coef = lam_vector / 2.0 if mode == "l2" else tf.zeros_like(lam_vector)
    decay_coef = learning_rate * lam_vector if mode == "decoupled" else tf.zeros_like(lam_vector)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer.build(stack.variables)

    order = epoch_order(len(train[0]), epochs, seed).astype(np.int32)
    run_epoch = _compiled_epoch(
        stack,
        optimizer,
        train,
        validation,
        penalty_coef=penalty_coef,
        decay_coef=decay_coef,
        batch_size=batch_size,
        dropout=_Dropout(rates, seed) if any(rates) else None,
        row_weights=row_weights(train[1], class_weights) if class_weights else None,
    )

    keys = ("loss", "bce", "accuracy") + (("val_loss", "val_bce", "val_accuracy") if validation else ())
    history: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    tracker = _BestTracker(len(lams), patience if validation is not None else 0, stack)
    for epoch in range(epochs):
        metrics = {key: value.numpy() for key, value in run_epoch(order[epoch], tf.constant(epoch)).items()}
        for key in keys:
            history[key].append(metrics[key])
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if validation is not None and tracker.update(epoch, metrics["val_bce"]):
            break
    _log.debug(
        "packed training: %d epoch(s), epoch function traced %d time(s)",
        len(history["loss"]),
        run_epoch.experimental_get_tracing_count(),
    )
    tracker.restore()
    train_probability = stack.probabilities(train[0])
    val_probability = stack.probabilities(validation[0]) if validation is not None else None
    return [
        MemberFit(
            model=stack.unpack(
                g,
                prep,
                lam=lam,
                mode=mode,
                dropout=rate,
                hidden_units=hidden_units,
                learning_rate=learning_rate,
                seed=seed,
            ),
            history={
                key: [float(v[g]) for v in series[: tracker.epochs_run(g, len(series))]]
                for key, series in history.items()
            },
            best_epoch=tracker.best_epoch(g, len(history["loss"])),
            train_probability=train_probability[g],
            val_probability=val_probability[g] if val_probability is not None else None,
        )
        for g, (lam, rate) in enumerate(zip(lams, rates, strict=True))
    ]


def row_weights(labels: np.ndarray, class_weights: Mapping[int, float]) -> np.ndarray:
    """Each row's weight in the training loss, from its label's class weight: shaped like ``labels``."""
    lookup = np.vectorize(lambda label: class_weights.get(int(label), 1.0), otypes=[np.float32])
    return lookup(np.asarray(labels)).astype(np.float32)


@dataclass(frozen=True)
class _Dropout:
    """Per-member dropout rates and the seed of their masks.

    A member's masks are seeded by its own rate, not its place in the pack, so a grid point
    trains the same whether its chunk holds the whole grid or that point alone.
    """

    rates: list[float]
    seed: int

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
                        [batch, width], seed=tf.stack([tf.constant(self._stream(layer, rate), tf.int64), counter])
                    )
                    for rate in self.rates
                ]
            )
            masks.append(tf.cast(uniform >= rates, tf.float32) * scale)
        return masks

    def _stream(self, layer: int, rate: float) -> int:
        """The first half of a mask's seed: one stream per (seed, hidden layer, rate)."""
        return (self.seed * 16 + layer) * 1_000_000 + round(rate * 1_000_000)


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


def _compiled_epoch(
    stack: _Stack,
    optimizer: Any,
    train: tuple[Encoded, np.ndarray],
    validation: tuple[Encoded, np.ndarray] | None,
    *,
    penalty_coef: Any,
    decay_coef: Any,
    batch_size: int,
    dropout: _Dropout | None = None,
    row_weights: np.ndarray | None = None,
) -> Any:
    """One epoch, every training step and then the validation pass, as one XLA-compiled function.

    A step of this tiny network costs far less arithmetic than graph-executor dispatch (about
    1.5 ms a step in a plain ``tf.function``); inside an XLA while-loop that dispatch is gone.
    XLA needs static shapes, so the epoch's row order is cut into its ``rows // batch_size``
    full batches, run in the loop, and the partial last batch (static size, maybe none), run
    once after it: the same batches in the same order as ``model.fit`` over
    :func:`epoch_batches`. Rows are gathered inside, from arrays held once as constants. The
    order's shape is the same every epoch, so the function is traced and compiled once.
    """
    import tensorflow as tf

    dense_all, indices_all = tf.constant(train[0].dense), tf.constant(train[0].indices)
    y_all = tf.constant(train[1])
    w_all = tf.constant(row_weights) if row_weights is not None else None
    held_out = (
        (tf.constant(validation[0].dense), tf.constant(validation[0].indices), tf.constant(validation[1]))
        if validation is not None
        else None
    )
    members = int(penalty_coef.shape[0])

    def step(rows: Any, epoch: Any, index: Any) -> Any:
        """One optimiser step on the batch ``rows``: its loss, bce and accuracy (3, G), times the batch size."""
        dense, indices, y = tf.gather(dense_all, rows), tf.gather(indices_all, rows), tf.gather(y_all, rows)
        weights = tf.gather(w_all, rows) if w_all is not None else None
        masks = dropout.masks(stack.hidden_widths, int(rows.shape[0]), epoch, index) if dropout else None
        with tf.GradientTape() as tape:
            logits = stack.logits(dense, indices, masks)
            bce = _bce(y, logits, weights)  # (G,)
            penalty = penalty_coef * stack.hidden_squared_norms()
            total = tf.reduce_sum(bce + penalty)
        grads = tape.gradient(total, [v.value for v in stack.variables])
        stack.decay_hidden(decay_coef)  # before the update, as Keras' AdamW does
        optimizer.apply(grads, stack.variables)
        return tf.stack([bce + penalty, bce, _accuracy(y, logits)]) * float(rows.shape[0])

    @tf.function(jit_compile=True)
    def run_epoch(order: Any, epoch: Any) -> dict[str, Any]:
        rows = int(order.shape[0])
        full = rows // batch_size * batch_size
        batches = tf.reshape(order[:full], [full // batch_size, batch_size])
        sums = tf.zeros([3, members])  # batch-size-weighted, as Keras reports
        for index in tf.range(full // batch_size):
            sums += step(batches[index], epoch, index)
        if full < rows:
            sums += step(order[full:], epoch, full // batch_size)
        means = sums / rows
        metrics = {"loss": means[0], "bce": means[1], "accuracy": means[2]}
        if held_out is not None:
            logits = stack.logits(held_out[0], held_out[1])
            val_bce = _bce(held_out[2], logits)
            penalty = penalty_coef * stack.hidden_squared_norms()
            metrics.update(val_loss=val_bce + penalty, val_bce=val_bce, val_accuracy=_accuracy(held_out[2], logits))
        return metrics

    return run_epoch


def _bce(y: Any, logits: Any, weights: Any = None) -> Any:
    """Mean binary cross-entropy per member, from logits: (G, B, 1) → (G,); rows weighted by ``weights`` (B, 1)."""
    import tensorflow as tf

    labels = tf.broadcast_to(y[None, :, :], tf.shape(logits))
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    if weights is not None:
        losses = losses * weights[None, :, :]
    return tf.reduce_mean(losses, axis=[1, 2])


def _accuracy(y: Any, logits: Any) -> Any:
    import tensorflow as tf

    predicted = tf.cast(tf.sigmoid(logits) > 0.5, tf.float32)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, y[None, :, :]), tf.float32), axis=[1, 2])


class _Stack:
    """All trained weights of G copies of the reference network, as one (G, P) variable.

    One flat variable per stack instead of several per network cuts the ops of every step
    (Adam's update becomes one set of elementwise ops); Adam is elementwise, so the
    arithmetic per weight is unchanged. Every member starts from the same initial weights.
    The pieces are the embedding tables (if any), then each Dense layer's kernel and bias;
    the input layers hold no trained weights and run once, before packing (``encode``).
    """

    def __init__(self, reference: Any, prep: Preprocessing, members: int) -> None:
        import keras

        self.dense_width = prep.dense_width
        self.tables = [reference.get_layer(f"{EMBEDDING_PREFIX}{i + 1}") for i in range(len(prep.embedded))]
        # All embedding tables stacked row-wise into one piece, looked up with offset indices.
        self.table_rows = [int(table.input_dim) for table in self.tables]
        self.offsets = np.cumsum([0, *self.table_rows[:-1]]).astype(np.int32)
        self.dense = [layer for layer in reference.layers if isinstance(layer, keras.layers.Dense)]
        self.hidden_widths = [int(layer.units) for layer in self.dense[:-1]]
        pieces = [np.concatenate([np.asarray(table.embeddings) for table in self.tables])] if self.tables else []
        pieces += [np.asarray(w) for layer in self.dense for w in (layer.kernel, layer.bias)]
        self.shapes = [piece.shape for piece in pieces]
        self.bounds = np.cumsum([0] + [piece.size for piece in pieces]).tolist()
        flat = np.concatenate([piece.ravel() for piece in pieces])
        self.theta = keras.Variable(np.repeat(flat[None, :], members, axis=0), name="packed_parameters")
        self.variables = [self.theta]
        first_dense = 1 if self.tables else 0
        penalized = [0] if self.tables else []
        penalized += [first_dense + 2 * i for i, layer in enumerate(self.dense) if layer.name.startswith(HIDDEN)]
        mask = np.zeros(flat.size, dtype=np.float32)
        for piece in penalized:
            mask[self.bounds[piece] : self.bounds[piece + 1]] = 1.0
        self.hidden_mask = mask

    def _pieces(self) -> list[Any]:
        import tensorflow as tf

        theta = self.theta.value
        members = tf.shape(theta)[0]
        return [
            tf.reshape(theta[:, start:end], tf.concat([[members], shape], axis=0))
            for start, end, shape in zip(self.bounds[:-1], self.bounds[1:], self.shapes, strict=True)
        ]

    def logits(self, dense: Any, indices: Any, masks: Sequence[Any] | None = None) -> Any:
        """(B, F) encoded rows and (B, k) lookup indices → (G, B, 1) logits of every member.

        ``masks`` (one (G, B, width) multiplier per hidden layer) applies dropout; without
        them the network runs as it predicts.
        """
        import tensorflow as tf

        pieces = self._pieces()
        layers = pieces[1:] if self.tables else pieces
        kernels, biases = layers[0::2], layers[1::2]
        first = kernels[0]
        z = biases[0][:, None, :]
        if self.dense_width:
            z = z + tf.einsum("bf,gfh->gbh", dense, first[:, : self.dense_width])
        if self.tables:
            # One gather for every embedded column: a gather per column (or a one-hot product)
            # cost several times more per step under XLA on a CPU.
            looked_up = tf.gather(pieces[0], indices + self.offsets, axis=1)  # (G, B, columns, dim)
            flat = tf.reshape(looked_up, tf.concat([tf.shape(looked_up)[:2], [-1]], axis=0))
            z = z + tf.einsum("gbd,gdh->gbh", flat, first[:, self.dense_width :])
        h = tf.nn.relu(z)
        if masks:
            h = h * masks[0]
        for layer, (kernel, bias) in enumerate(zip(kernels[1:-1], biases[1:-1], strict=True), start=1):
            h = tf.nn.relu(tf.einsum("gbf,gfh->gbh", h, kernel) + bias[:, None, :])
            if masks:
                h = h * masks[layer]
        return tf.einsum("gbf,gfh->gbh", h, kernels[-1]) + biases[-1][:, None, :]

    def probabilities(self, rows: Encoded) -> np.ndarray:
        """(G, rows) probabilities of every member, in slices of :data:`PREDICT_ROWS` rows."""
        import tensorflow as tf

        parts = [
            tf.sigmoid(
                self.logits(rows.dense[start : start + PREDICT_ROWS], rows.indices[start : start + PREDICT_ROWS])
            ).numpy()[:, :, 0]
            for start in range(0, len(rows), PREDICT_ROWS)
        ]
        members = int(self.theta.shape[0])
        return np.concatenate(parts, axis=1) if parts else np.zeros((members, 0), dtype=np.float32)

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
        flat = np.array(self.theta.value)[g]
        pieces = [
            flat[start:end].reshape(shape)
            for start, end, shape in zip(self.bounds[:-1], self.bounds[1:], self.shapes, strict=True)
        ]
        if self.tables:
            stacked = pieces.pop(0)
            for table, offset, rows in zip(self.tables, self.offsets, self.table_rows, strict=True):
                model.get_layer(table.name).embeddings.assign(stacked[offset : offset + rows])
        dense = [
            w for layer in self.dense for w in (model.get_layer(layer.name).kernel, model.get_layer(layer.name).bias)
        ]
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
