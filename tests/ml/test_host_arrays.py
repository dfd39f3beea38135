"""Encoded rows reach TensorFlow without a second copy: aligned arrays are shared, anything else is copied."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, mixed_table
from wd_pipeline.ml import preprocessing
from wd_pipeline.ml.host_arrays import ALIGNMENT, aligned_empty, as_tensor, shareable


@pytest.mark.parametrize(("shape", "dtype"), [((1000, 30), np.float32), ((7, 3), np.int32), ((1, 1), np.int32)])
def test_aligned_arrays_start_on_the_boundary(shape: tuple[int, int], dtype: type) -> None:
    array = aligned_empty(shape, dtype)
    assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
    assert array.ctypes.data % ALIGNMENT == 0 and shareable(array)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0)])  # no rows; rows without embedded columns
def test_empty_arrays_become_empty_tensors(shape: tuple[int, int]) -> None:
    assert tuple(as_tensor(aligned_empty(shape, np.int32)).shape) == shape


def test_an_aligned_array_is_shared_and_any_other_copied() -> None:
    aligned = aligned_empty((100, 4), np.float32)
    aligned[:] = 1.0
    offset = aligned[1:]  # one row in: 16 bytes past the boundary
    assert not shareable(offset)
    shared, copied = as_tensor(aligned), as_tensor(offset)
    aligned[:] = 2.0  # only for the test: as_tensor's callers never write afterwards
    assert float(shared.numpy().min()) == 2.0
    assert float(copied.numpy().max()) == 1.0


@pytest.mark.parametrize("slice_rows", [16, 150, 65536])  # slices and a remainder, one exact slice, one short slice
def test_encoded_rows_are_shareable_and_equal_the_encoders_output(slice_rows: int, monkeypatch) -> None:
    table = mixed_table(rows=150, seed=4)
    rows = table.rows(0, 150)
    prep = preprocessing.adapt(rows.features, table.schema, one_hot_max=MIXED_ONE_HOT_MAX)
    assert prep.embedded and prep.dense_width
    monkeypatch.setattr(preprocessing, "ENCODE_ROWS", slice_rows)
    encoded = preprocessing.encode(prep, rows.features)
    assert shareable(encoded.dense) and shareable(encoded.indices)
    out = preprocessing.encoder(prep)(preprocessing.model_inputs(rows.features, prep), training=False)
    np.testing.assert_array_equal(encoded.dense, np.asarray(out["dense"]))
    np.testing.assert_array_equal(encoded.indices, np.asarray(out["indices"]).reshape(encoded.indices.shape))
