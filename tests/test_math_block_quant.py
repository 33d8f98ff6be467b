"""Block-wise int4 maths: grids against a numpy reference, exact round trips, packing layouts, the scale search."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math import block_quant as bq


def reference(w: np.ndarray, block: int, symmetric: bool) -> np.ndarray:
    """Block RTN written out loop by loop: one (scale, zero point) per block of rows and column."""
    out = np.zeros_like(w, dtype=np.float64)
    for start in range(0, w.shape[0], block):
        for j in range(w.shape[1]):
            v = w[start:start + block, j].astype(np.float64)
            if symmetric:
                scale = float(np.float32(np.abs(v).max() / 7)) or 1.0
                q, zero = np.clip(np.round(v / scale), -8, 7), 0.0
            else:
                low, high = min(v.min(), 0.0), max(v.max(), 0.0)
                scale = float(np.float32((high - low) / 15)) or 1.0
                zero = float(np.clip(np.round(-low / scale), 0, 15))
                q = np.clip(np.round(v / scale) + zero, 0, 15)
            out[start:start + block, j] = (q - zero) * scale
    return out


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32])
def test_quantize_matches_the_loop_reference(rng: np.random.Generator, symmetric: bool, block: int) -> None:
    w = rng.standard_normal((96, 7)) * rng.uniform(0.1, 3, (96, 1))
    q = bq.quantize(w, block, symmetric)
    assert q.values.shape == (96, 7) and q.scales.shape == (96 // block, 7)
    low, high = (-8, 7) if symmetric else (0, 15)
    assert q.values.min() >= low and q.values.max() <= high
    np.testing.assert_allclose(bq.dequantize(q), reference(w, block, symmetric), rtol=0, atol=1e-12)
    assert np.max(np.abs(bq.dequantize(q) - w)) <= np.max(q.scales) * (0.5 + 1e-9)


@pytest.mark.parametrize("symmetric", [True, False])
def test_weights_on_the_grid_round_trip_exactly(rng: np.random.Generator, symmetric: bool) -> None:
    scales = rng.uniform(0.01, 0.1, (4, 5))
    ints = rng.integers(-7, 8, (128, 5)) if symmetric else rng.integers(0, 16, (128, 5))
    ints[::32] = 7 if symmetric else 15  # every block reaches the top of the grid
    if not symmetric:
        ints[1::32] = 0
        ints -= 3  # zero point 3: values in [-3, 12]
    w = ints * np.repeat(scales, 32, axis=0)
    q = bq.quantize(w, 32, symmetric)
    np.testing.assert_allclose(bq.dequantize(q), w, rtol=1e-6, atol=0)
    searched, clips = bq.search(w, 32, symmetric)
    np.testing.assert_allclose(bq.dequantize(searched), w, rtol=1e-6, atol=0)
    assert np.all(clips == 1.0)


def test_a_partial_last_block_and_zero_blocks() -> None:
    w = np.zeros((40, 3))
    w[35:, 1] = [1.0, -2.0, 0.5, 3.0, -1.0]
    q = bq.quantize(w, 16, True)
    assert q.scales.shape == (3, 3) and np.all(q.scales[:, 0] == 1.0)  # all-zero blocks keep scale 1
    np.testing.assert_allclose(bq.dequantize(q)[:, 0], 0.0)
    assert np.abs(bq.dequantize(q) - w).max() <= q.scales[2, 1] / 2 + 1e-12


def test_int4_packing_is_low_nibble_first_and_unpacks() -> None:
    assert bq.pack_int4(np.array([1, 2, 3])).tolist() == [0x21, 0x03]
    assert bq.pack_int4(np.array([-1, -8, 7, 0])).tolist() == [0x8F, 0x07]
    rng = np.random.default_rng(1)
    signed = rng.integers(-8, 8, 37)
    np.testing.assert_array_equal(bq.unpack_int4(bq.pack_int4(signed), 37, True), signed)
    unsigned = rng.integers(0, 16, 36)
    np.testing.assert_array_equal(bq.unpack_int4(bq.pack_int4(unsigned), 36, False), unsigned)


@pytest.mark.parametrize("symmetric", [True, False])
def test_nbits_layout_against_a_direct_decoding(rng: np.random.Generator, symmetric: bool) -> None:
    """B[n, b, i] holds rows 2i and 2i+1 of block b of column n; zero points pack along the blocks the same way."""
    k, n, block = 96, 5, 32
    q = bq.quantize(rng.standard_normal((k, n)), block, symmetric)
    b, scales, zeros = bq.pack_nbits(q)
    assert b.shape == (n, 3, 16) and scales.shape == (n, 3) and scales.dtype == np.float32
    decoded = np.zeros((k, n))
    for col in range(n):
        for blk in range(3):
            nibbles = bq.unpack_int4(b[col, blk], block, False).astype(np.float64)
            if zeros is None:
                zero = 8.0
            else:
                assert zeros.shape == (n, 2)
                zero = float(bq.unpack_int4(zeros[col], 4, False)[blk])
            decoded[blk * block:(blk + 1) * block, col] = (nibbles - zero) * scales[col, blk]
    np.testing.assert_allclose(decoded, bq.dequantize(q), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_search_never_increases_its_error(rng: np.random.Generator, symmetric: bool) -> None:
    w = rng.standard_normal((256, 24))
    w[rng.integers(0, 256, 12), rng.integers(0, 24, 12)] *= 8  # outliers: clipping pays
    importance = rng.uniform(0.01, 4, 256) ** 2
    rtn = bq.dequantize(bq.quantize(w, 32, symmetric))
    for weights in (None, importance):
        searched, clips = bq.search(w, 32, symmetric, weights)
        rows = np.ones(256) if weights is None else weights
        after, before = ((rows[:, None] * (w - a) ** 2).reshape(8, 32, 24).sum(axis=1)
                         for a in (bq.dequantize(searched), rtn))
        assert np.all(after <= before + 1e-12)
        assert after.sum() < 0.95 * before.sum()
        assert np.any(clips < 1.0) and clips.shape == (8, 24)


def test_data_aware_search_lowers_the_output_error(rng: np.random.Generator) -> None:
    """Inputs with a few loud channels: weighting rows by E[x²] beats weight MSE on the layer output."""
    x = rng.standard_normal((512, 128)) * np.where(rng.random(128) < 0.1, 10.0, 1.0)
    w = rng.standard_normal((128, 32))
    gram = x.T @ x / len(x)
    errors = {}
    for name, importance in (("mse", None), ("data", np.diag(gram))):
        errors[name] = bq.output_error(w, bq.dequantize(bq.search(w, 32, True, importance)[0]), gram)
    rtn = bq.output_error(w, bq.dequantize(bq.quantize(w, 32, True)), gram)
    assert errors["data"] < errors["mse"] <= rtn, errors
    assert bq.output_error(w, w, gram) == 0.0
    assert bq.output_error(w, np.zeros_like(w), gram) == pytest.approx(1.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="K×N"):
        bq.quantize(np.zeros(8), 16)
    with pytest.raises(ValueError, match="importance"):
        bq.search(np.zeros((32, 2)), 16, True, np.ones(3))
