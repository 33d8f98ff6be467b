"""Calibration for qdq-int8: activation ranges, and the channel means that bias correction needs, streamed.

Both stream the calibration samples through the float model batch by batch and reduce each batch at once into
fixed-size state (min/max and a histogram per tensor; one mean vector per tensor), so memory does not grow with the
number of samples, and the model's own outputs are never fetched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from graphopt.activations import reduce_activations
from graphopt.pass_base import PassContext
from graphopt_passes._math import bias_correction as bc
from graphopt_passes._math import quant, smooth
from graphopt_passes._qdq_plan import Layer

__all__ = [
    "MeansKey",
    "Ranges",
    "activation_ranges",
    "bias_shifts",
    "channel_means",
    "channel_ranges",
    "means_key",
    "search_smoothing",
]

Ranges = dict[str, tuple[float, float]]
MeansKey = tuple[str, str, int]
"""(tensor, the tensor whose range sets its grid, channel axis)."""


def _reduce(model: onnx.ModelProto, reducers: Mapping[str, Callable[[np.ndarray], None]], context: PassContext,
            label: str) -> None:
    """Stream the calibration samples into ``reducers``; ``CalibrationError`` when onnxruntime cannot run them."""
    assert context.calibration is not None
    reduce_activations(model, reducers, context.calibration, context.runtime, progress=context.progress,
                              label=label)


def activation_ranges(model: onnx.ModelProto, names: Sequence[str], context: PassContext, method: str, *,
                      percentile: float, signed: bool) -> Ranges:
    """The calibrated range of each tensor in ``names`` that any calibration sample computed (a tensor of an ``If``
    branch that no sample took has none)."""
    minmax = {name: quant.MinMaxObserver() for name in names}
    histograms = {name: quant.HistogramObserver() for name in names} if method in ("percentile", "mse") else {}

    def observe(name: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            minmax[name].update(x)
            if histograms:
                histograms[name].update(x)
        return update

    _reduce(model, {name: observe(name) for name in names}, context, "int8 calibration")
    seen = [name for name in names if minmax[name].count or minmax[name].ignored]  # not: in an If branch not taken
    return {name: quant.estimate_range(minmax[name], histograms.get(name), method, percentile=percentile,
                                       signed=signed) for name in seen}


def channel_means(model: onnx.ModelProto, keys: Sequence[MeansKey], grid: Callable[[str], quant.QuantParams],
                  context: PassContext) -> dict[MeansKey, tuple[np.ndarray, np.ndarray]]:
    """Per-channel means of each tensor and of its fake-quantized copy on ``grid(source)``."""
    plain = {key: bc.ChannelMeans(key[2]) for key in keys}
    rounded = {key: bc.ChannelMeans(key[2]) for key in keys}

    def observe(name: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            for key in (k for k in keys if k[0] == name):
                plain[key].update(x)
                rounded[key].update(quant.fake_quantize(x, grid(key[1])))
        return update

    _reduce(model, {name: observe(name) for name in {key[0] for key in keys}}, context, "bias correction")
    return {key: (plain[key].mean, rounded[key].mean) for key in keys}


def means_key(layer: Layer, source: str) -> MeansKey:
    return layer.activation, source, 1 if layer.op == "Conv" else -1


def bias_shifts(layers: Sequence[Layer], sources: Mapping[str, str], weights: Callable[[Layer], quant.QuantParams],
                means: Mapping[MeansKey, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean output shift of each layer with a bias, to subtract from it (layers without means are left out)."""
    shifts = {}
    for layer in layers:
        key = means_key(layer, sources[layer.activation])
        if layer.bias is None or key not in means:
            continue
        kind = {"MatMul": "matmul", "Gemm": "gemm", "Conv": "conv"}[layer.op]
        options = {"trans_b": bool(layer.node.attrs.get("transB", 0)), "groups": int(layer.node.attrs.get("group", 1))}
        exact = bc.mean_map(layer.weight, kind, **options)
        mean_x, mean_rounded_x = means[key]
        if mean_x.shape[0] != exact.shape[0]:
            continue
        rounded = bc.mean_map(quant.fake_quantize(layer.weight, weights(layer)), kind, **options)
        shifts[layer.name] = bc.output_shift(exact, rounded, mean_x, mean_rounded_x)
    return shifts


def channel_ranges(model: onnx.ModelProto, names: Sequence[str], context: PassContext
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (last axis) min and max of each tensor on the calibration samples."""
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def observe(name: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            rows = x.reshape(-1, x.shape[-1])
            low, high = rows.min(axis=0), rows.max(axis=0)
            if name in ranges:
                low, high = np.minimum(ranges[name][0], low), np.maximum(ranges[name][1], high)
            ranges[name] = (low, high)
        return update

    _reduce(model, {name: observe(name) for name in names}, context, "smoothing ranges")
    return ranges


def search_smoothing(model: onnx.ModelProto, searches: Mapping[str, smooth.SmoothingSearch],
                     context: PassContext) -> None:
    """Feed every search its activation's batches."""
    _reduce(model, {name: search.update for name, search in searches.items()}, context, "smoothing search")
