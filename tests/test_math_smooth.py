"""SmoothQuant maths: the scale formula and the α search on outlier channels."""

from __future__ import annotations

import numpy as np

from graphopt_passes._math import quant, smooth


def test_scales_follow_the_formula_and_floor_silent_channels() -> None:
    s = smooth.smoothing_scales([4.0, 9.0, 0.0], [1.0, 4.0, 1.0], alpha=0.5)
    np.testing.assert_allclose(s[:2], [2.0, 1.5], rtol=1e-6)
    assert s[2] > 0 and np.isfinite(s).all()


def outliers(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, 64))
    x[:, :3] *= 40.0  # a few huge channels, as LayerNorm outputs have
    return x


def test_search_prefers_smoothing_on_outlier_channels_and_reports_its_error(rng: np.random.Generator) -> None:
    weights = [rng.standard_normal((64, 32)) / 8, rng.standard_normal((64, 16)) / 8]
    calibration = [outliers(rng, 256) for _ in range(3)]
    stacked = np.concatenate(calibration)
    search = smooth.SmoothingSearch(weights, stacked.min(axis=0), stacked.max(axis=0), [None, 0.5, 0.8])
    for batch in calibration:
        search.update(batch)
    alpha, scales, error = search.best()
    assert alpha is not None and scales is not None and scales.shape == (64,)
    assert error < 0.5 * search.errors[0] / search.energy, "smoothing must beat no smoothing by a margin here"


def test_no_smoothing_candidate_is_the_plain_quantized_error(rng: np.random.Generator) -> None:
    w = rng.standard_normal((64, 32)) / 8
    x = rng.uniform(-1, 1, (512, 64))
    search = smooth.SmoothingSearch([w], x.min(axis=0), x.max(axis=0), [None, 0.5])
    for part in np.array_split(x, 4):
        search.update(part)
    xq = quant.fake_quantize(x, quant.activation_params(x.min(), x.max())).astype(np.float64)
    wq = quant.fake_quantize(w, quant.weight_params(w, 1)).astype(np.float64)
    np.testing.assert_allclose(search.errors[0], np.sum((xq @ wq - x @ w) ** 2), rtol=1e-9)
    np.testing.assert_allclose(search.energy, np.sum((x @ w) ** 2), rtol=1e-12)
    assert search.best()[2] == min(search.errors) / search.energy
