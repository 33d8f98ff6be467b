"""Conv patches (im2col): ``patches(x) @ W.reshape(N, -1).T`` is onnxruntime's Conv, for every geometry."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_ort, text_model

from graphopt_passes._math.patches import ConvGeometry, patches

CASES = [
    (ConvGeometry((3, 3)), "kernel_shape: ints = [3, 3]"),
    (ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)), "strides: ints = [2, 2], pads: ints = [1, 1, 1, 1]"),
    (ConvGeometry((3, 2), (1, 2), (2, 1), (0, 1, 2, 0)),
     "strides: ints = [1, 2], dilations: ints = [2, 1], pads: ints = [0, 1, 2, 0]"),
    (ConvGeometry((3, 3), (2, 2), auto_pad="SAME_UPPER"), 'strides: ints = [2, 2], auto_pad: string = "SAME_UPPER"'),
    (ConvGeometry((2, 2), auto_pad="SAME_LOWER"), 'auto_pad: string = "SAME_LOWER"'),
]


@pytest.mark.parametrize(("geometry", "attrs"), CASES)
def test_patches_times_the_kernel_is_the_convolution(rng: np.random.Generator, geometry: ConvGeometry,
                                                     attrs: str) -> None:
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, *geometry.kernel)).astype(np.float32)
    model = text_model(f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3,7,8] x) => (float[?,?,?,?] y) {{ y = Conv <{attrs}> (x, w) }}""", w=w)
    expected = run_ort(model, {"x": x})[0]
    rows = patches(x, geometry) @ w.reshape(4, -1).T
    got = np.moveaxis(rows.reshape(2, *expected.shape[2:], 4), -1, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_patches_of_a_1d_conv_and_bad_shapes(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 2, 5)).astype(np.float32)
    rows = patches(x, ConvGeometry((2,)))
    assert rows.shape == (4, 4)
    np.testing.assert_array_equal(rows[1], [x[0, 0, 1], x[0, 0, 2], x[0, 1, 1], x[0, 1, 2]])
    with pytest.raises(ValueError, match="rank"):
        patches(x, ConvGeometry((2, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        patches(x, ConvGeometry((7,)))
