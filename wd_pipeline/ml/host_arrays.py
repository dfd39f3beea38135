"""NumPy arrays that TensorFlow can use in place, without a copy of its own.

``tf.constant`` copies a NumPy array, so a training that keeps its encoded rows as NumPy
(for scoring) and as a TensorFlow constant (for the compiled epoch) holds them twice. A
DLPack hand-over shares the buffer instead, but TensorFlow's CPU kernels require buffers
aligned to :data:`ALIGNMENT` bytes (they abort the process otherwise), and NumPy aligns to
16 only: arrays meant for TensorFlow are allocated aligned (:func:`aligned_empty`), and
:func:`as_tensor` shares only those, copying anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALIGNMENT = 64  # bytes: Eigen's widest alignment requirement on a CPU


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an :data:`ALIGNMENT`-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def shareable(array: np.ndarray) -> bool:
    """Whether TensorFlow may use ``array``'s buffer as it is (an empty array has nothing to share)."""
    return array.size > 0 and bool(array.flags.c_contiguous) and array.ctypes.data % ALIGNMENT == 0


def as_tensor(array: np.ndarray) -> Any:
    """A TensorFlow tensor over ``array``: its own buffer when :func:`shareable`, else a copy.

    The tensor keeps the array alive; neither may be written to afterwards.
    """
    import tensorflow as tf

    if shareable(array):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array)
