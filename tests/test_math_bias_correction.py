"""Bias correction maths: channel means, the mean map of each layer kind, and the exact shift of linear layers."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math import bias_correction as bc


def conv_valid(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """A direct grouped 2-D convolution without padding, as the reference."""
    n, _, h, width = x.shape
    o, per_group, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, width - kw + 1))
    out_per_group = o // groups
    for oc in range(o):
        g = oc // out_per_group
        patch = x[:, g * per_group:(g + 1) * per_group]
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                out[:, oc, i, j] = np.einsum("ncij,cij->n", patch[:, :, i:i + kh, j:j + kw], w[oc])
    return out


def test_channel_means_over_batches_equal_the_global_mean(rng: np.random.Generator) -> None:
    x = rng.standard_normal((10, 3, 4, 5))
    means = bc.ChannelMeans(axis=1)
    for part in np.array_split(x, 3):
        means.update(part)
    np.testing.assert_allclose(means.mean, x.mean(axis=(0, 2, 3)))
    last = bc.ChannelMeans(axis=-1)
    last.update(x)
    np.testing.assert_allclose(last.mean, x.mean(axis=(0, 1, 2)))
    with pytest.raises(ValueError, match="no values"):
        _ = bc.ChannelMeans(0).mean


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_conv_mean_map_is_exact_for_spatially_constant_inputs(rng: np.random.Generator, groups: int) -> None:
    w = rng.standard_normal((6, 6 // groups, 3, 3))
    x = np.broadcast_to(rng.standard_normal((5, 6, 1, 1)), (5, 6, 7, 7)).copy()
    want = conv_valid(x, w, groups).mean(axis=(0, 2, 3))
    got = x.mean(axis=(0, 2, 3)) @ bc.mean_map(w, "conv", groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_matrix_maps_and_the_shift_of_a_linear_layer_are_exact(rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((50, 8)) + 1.0, rng.standard_normal((8, 4))
    xq, wq = np.round(x * 4) / 4, np.round(w * 4) / 4
    want = (xq @ wq - x @ w).mean(axis=0)
    shift = bc.output_shift(bc.mean_map(w, "matmul"), bc.mean_map(wq, "matmul"), x.mean(0), xq.mean(0))
    np.testing.assert_allclose(shift, want, atol=1e-12)
    np.testing.assert_array_equal(bc.mean_map(w.T, "gemm", trans_b=True), w)
    with pytest.raises(ValueError, match="groups"):
        bc.mean_map(rng.standard_normal((5, 2, 3, 3)), "conv", groups=2)
