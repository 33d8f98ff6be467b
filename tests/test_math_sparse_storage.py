"""Sparse storage maths: COO round trips in both index forms, byte counts and the dense-or-sparse choice."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math.sparse_storage import choose_storage, coo_bytes, coo_decode, coo_encode, deflated_size


def test_coo_round_trips_with_linear_and_coordinate_indices(rng: np.random.Generator) -> None:
    w = rng.standard_normal((6, 5, 3)).astype(np.float16)
    w[rng.random(w.shape) < 0.7] = 0
    values, indices = coo_encode(w)
    assert values.dtype == np.float16 and indices.dtype == np.int64 and values.size == np.count_nonzero(w)
    assert np.all(np.diff(indices) > 0) and np.all(values != 0)
    np.testing.assert_array_equal(coo_decode(values, indices, w.shape), w)
    coordinates = np.stack(np.nonzero(w), axis=1)
    np.testing.assert_array_equal(coo_decode(values, coordinates, w.shape), w)
    empty = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(coo_decode(*coo_encode(empty), (3, 4)), empty)
    np.testing.assert_array_equal(coo_decode(np.zeros(0, np.float32), np.zeros((0, 2), np.int64), (3, 4)), empty)
    with pytest.raises(ValueError, match="indices for"):
        coo_decode(values[:-1], indices, w.shape)
    with pytest.raises(ValueError, match="out of range"):
        coo_decode(values[:1], np.array([w.size]), w.shape)


@pytest.mark.parametrize(("nonzeros", "dtype", "expected"), [
    (33, np.float32, "sparse"),  # 33·12 = 396 < 400 bytes
    (34, np.float32, "dense"),  # 408 > 400: float32 pays below density 1/3
    (19, np.float16, "sparse"),  # 19·10 = 190 < 200
    (20, np.float16, "dense"),  # a tie keeps dense
    (0, np.float32, "sparse"),
])
def test_auto_storage_is_sparse_only_when_its_payload_is_smaller(nonzeros: int, dtype: type, expected: str) -> None:
    w = np.zeros(100, dtype)
    w[:nonzeros] = 1
    assert coo_bytes(nonzeros, w.itemsize) == nonzeros * (w.itemsize + 8)
    assert choose_storage(w, "auto") == expected
    assert choose_storage(w, "dense") == "dense" and choose_storage(w, "sparse") == "sparse"
    with pytest.raises(ValueError, match="storage"):
        choose_storage(w, "zip")


def test_zeros_deflate(rng: np.random.Generator) -> None:
    dense = rng.standard_normal(4096).astype(np.float32)
    half = dense.copy()
    half[rng.random(4096) < 0.5] = 0
    assert deflated_size(half.tobytes()) < 0.7 * deflated_size(dense.tobytes()) < 0.7 * dense.nbytes
