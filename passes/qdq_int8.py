"""QDQ int8: insert QuantizeLinear/DequantizeLinear pairs so the runtime runs Conv, Gemm and MatMul layers in int8.

Where the pairs go is ``graphopt_passes._qdq_plan``'s job (rules a runtime can fuse); this module calibrates and
rewrites. Calibration streams the calibration samples through the float model and reduces each batch into bounded
observers (running min/max and a fixed-size histogram per tensor), so memory does not grow with the sample count;
ranges then come from the chosen estimator (``_math.quant``). Weights are symmetric int8 per output channel, 7-bit
where the CPU lacks VNNI (onnxruntime's AVX2 u8·s8 kernels saturate on full-range weights), and stored as int8, so
the file shrinks too; biases are int32 at scale ``s_x·s_w``. Every layer is a unit: when the quantized model breaks
the budget, the manager measures each layer's damage alone and keeps as many layers in int8 as the budget allows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.activations import stream_activations
from graphopt.errors import PassError, PreconditionError, first_line
from graphopt.graph import copy_model, editing
from graphopt.machine import has_vnni
from graphopt.normalize import ensure_opset
from graphopt.pass_base import PassBase, PassContext, PassResult, Skip, Unit
from graphopt.perf import measure_latency
from graphopt_passes import _qdq_plan as plan
from graphopt_passes._channels import Scope
from graphopt_passes._math import quant

__all__ = ["QdqInt8Pass"]

log = logging.getLogger(__name__)

_Ranges = dict[str, tuple[float, float]]


class QdqInt8Pass(PassBase):
    """Quantize Conv/Gemm/MatMul layers to int8 with QDQ pairs a runtime fuses, verified layer by layer."""

    name = "qdq-int8"
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        target: Literal["ort-cpu", "openvino", "tensorrt"] = field(
            default="ort-cpu",
            metadata={"help": "runtime the QDQ model is for: ort-cpu and openvino use uint8 activations, tensorrt "
                      "symmetric int8"},
        )
        ranges: Literal["minmax", "mean-minmax", "percentile", "mse"] = field(
            default="mse", metadata={"help": "activation range estimator"}
        )
        percentile: float = field(default=99.99, metadata={"help": "two-sided percentile for ranges=percentile"})
        weight_bits: Literal["auto", "7", "8"] = field(
            default="auto",
            metadata={"help": "auto: 7 for ort-cpu on CPUs without VNNI (avoids int16 saturation), else 8"},
        )
        per_channel: bool = field(default=True, metadata={"help": "one weight scale per output channel"})
        min_dim: int = field(default=16, metadata={"help": "leave layers with a reduction or output size below this"})
        speed_check: Literal["decline", "note", "off"] = field(
            default="decline",
            metadata={"help": "time int8 against float (single thread, batch 1, interleaved): decline an int8 model "
                      "that is not faster, or only note the ratio"},
        )

        def __post_init__(self) -> None:
            if not 50 <= self.percentile <= 100 or self.min_dim < 1:
                raise ValueError("need 50 <= percentile <= 100 and min_dim >= 1")

    def __init__(self, options: QdqInt8Pass.Options | None = None) -> None:
        super().__init__(options)
        self._cache: tuple[bytes, object, _Ranges | str] | None = None

    @property
    def weight_bits(self) -> int:
        if self.options.weight_bits != "auto":
            return int(self.options.weight_bits)
        return 7 if self.options.target == "ort-cpu" and not has_vnni() else 8

    def requires(self, model: onnx.ModelProto, context: PassContext) -> None:
        if context.calibration is None or context.calibration.n_samples == 0:
            raise PreconditionError("qdq-int8 calibrates activation ranges on samples, and none were given")

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer that can run in int8; the manager measures each one's damage."""
        graph = gs.import_onnx(model)
        layers, _ = plan.find_layers(graph, Scope.of(graph), min_dim=self.options.min_dim)
        return tuple(Unit(layer.name, None, f"{layer.op} {'×'.join(map(str, layer.shape))}") for layer in layers)

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        empty = {"layers_quantized": 0, "tensors_quantized": 0, "weight_bits": self.weight_bits}
        notes: list[str] = []
        if self.options.per_channel:
            try:
                model, upgraded = ensure_opset(model, 13)
            except PassError as e:
                return PassResult(copy_model(model), False, empty, (Skip("graph", first_line(e)),))
            notes += [upgraded] if upgraded else []
        ranges = self._ranges(model, context)
        if isinstance(ranges, str):
            return PassResult(copy_model(model), False, empty, (Skip("graph", ranges),))
        try:
            with editing(model) as edit:
                scope = Scope.of(edit.graph)
                scope.names.update(node.name for node in edit.graph.nodes)
                layers, skipped = plan.find_layers(edit.graph, scope, min_dim=self.options.min_dim)
                chosen = [layer for layer in layers if context.selects(layer.name)]
                placement = plan.place(edit.graph, scope, chosen)
                counts = _rewrite(edit.graph, scope, placement, ranges, self.options, self.weight_bits)
        except Exception as e:  # noqa: BLE001 - a pass must never crash the pipeline
            log.info("%s left the model unchanged: %s", self.name, e)
            return PassResult(copy_model(model), False, empty,
                              (Skip("graph", f"rewrite failed: {type(e).__name__}: {first_line(e)}"),))
        if not chosen:
            return PassResult(copy_model(model), False, empty, tuple(skipped))
        bits = self.weight_bits
        notes.append(f"weights {bits}-bit" + (" (no VNNI on this CPU: full-range int8 saturates in AVX2 kernels)"
                                             if bits == 7 and self.options.weight_bits == "auto" else ""))
        stats: dict[str, int | float] = {"layers_quantized": len(chosen), "tensors_quantized": len(placement.tensors),
                                         "weight_bits": bits, **counts}
        if self.options.speed_check != "off":
            stats["latency_ratio"] = ratio = _latency_ratio(model, edit.model, context)
            if ratio >= 1.0 and self.options.speed_check == "decline":
                why = (f"int8 is not faster here: {ratio:.3f}× the float latency (single thread, batch 1); "
                       "speed_check=note keeps it anyway")
                return PassResult(copy_model(model), False, {**empty, "latency_ratio": ratio},
                                  (*skipped, Skip("graph", why)))
        log.info("%s: %s", self.name, stats)
        return PassResult(edit.model, True, stats, tuple(skipped), tuple(notes))

    def _ranges(self, model: onnx.ModelProto, context: PassContext) -> _Ranges | str:
        """Calibrated ranges of every tensor any selection could quantize, cached by model digest."""
        try:
            key = hashlib.sha256(model.SerializeToString()).digest()
        except ValueError:
            key = b""
        if key and self._cache and self._cache[0] == key and self._cache[1] is context.calibration:
            return self._cache[2]
        graph = gs.import_onnx(model)
        layers, _ = plan.find_layers(graph, Scope.of(graph), min_dim=self.options.min_dim)
        names = sorted({t for layer in layers for t in (layer.activation, layer.result)})
        ranges = _calibrate(model, names, context, self.options) if names else {}
        self._cache = (key, context.calibration, ranges) if key else None
        return ranges


def _latency_ratio(before: onnx.ModelProto, after: onnx.ModelProto, context: PassContext) -> float:
    """int8 over float median latency on one calibration sample, measured interleaved in about two seconds."""
    assert context.calibration is not None
    feed = next(context.calibration.batches(1, per_sample=True))[0]
    float_, int8 = measure_latency([before, after], feed, runs=500, warmup=20, budget_s=2.0)
    return round(int8.median_ms / float_.median_ms, 3)


def _calibrate(model: onnx.ModelProto, names: list[str], context: PassContext,
               options: QdqInt8Pass.Options) -> _Ranges | str:
    assert context.calibration is not None
    minmax = {name: quant.MinMaxObserver() for name in names}
    histograms = {name: quant.HistogramObserver() for name in names} if options.ranges in ("percentile", "mse") \
        else {}
    try:
        for batch in stream_activations(model, names, context.calibration, context.runtime,
                                        progress=context.progress, label="int8 calibration"):
            for name in names:
                minmax[name].update(batch[name])
                if histograms:
                    histograms[name].update(batch[name])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
        return f"calibration failed: {type(e).__name__}: {first_line(e)}"
    signed = options.target == "tensorrt"
    return {name: quant.estimate_range(minmax[name], histograms.get(name), options.ranges,
                                       percentile=options.percentile, signed=signed) for name in names}


def _rewrite(graph: gs.Graph, scope: Scope, placement: plan.Placement, ranges: _Ranges,
             options: QdqInt8Pass.Options, bits: int) -> dict[str, int]:
    """Insert the pairs of ``placement`` and quantize its layers' weights and biases; returns byte counts."""
    tensors = graph.tensors()
    signed = options.target == "tensorrt"
    grids: dict[str, tuple[quant.QuantParams, gs.Constant, gs.Constant]] = {}

    def grid(source: str) -> tuple[quant.QuantParams, gs.Constant, gs.Constant]:
        if source not in grids:
            params = quant.activation_params(*ranges[source], signed=signed)
            grids[source] = (params, gs.Constant(scope.fresh(f"{source}_scale"), np.asarray(params.scale)),
                             gs.Constant(scope.fresh(f"{source}_zero_point"), np.asarray(params.zero_point)))
        return grids[source]

    layer_nodes: dict[str, list[gs.Node]] = {layer.activation: [] for layer in placement.layers}
    for layer in placement.layers:
        layer_nodes[layer.activation].append(layer.node)
    for tq in placement.tensors.values():
        _, scale, zero = grid(tq.source)
        tensor = tensors[tq.name]
        quantized = gs.Variable(scope.fresh(f"{tq.name}_quantized"), dtype=zero.values.dtype, shape=tensor.shape)
        if tq.everyone and len(tensor.inputs) == 1:
            producer, raw = tensor.inputs[0], gs.Variable(scope.fresh(f"{tq.name}_float"), tensor.dtype, tensor.shape)
            producer.outputs[producer.outputs.index(tensor)] = raw
            source, restored, readers = raw, tensor, []
        else:
            restored = gs.Variable(scope.fresh(f"{tq.name}_dequantized"), dtype=np.float32, shape=tensor.shape)
            source, readers = tensor, list(tensor.outputs) if tq.everyone else layer_nodes[tq.name]
        graph.nodes.append(gs.Node("QuantizeLinear", scope.fresh(f"{tq.name}_QuantizeLinear"), {},
                                   [source, scale, zero], [quantized]))
        graph.nodes.append(gs.Node("DequantizeLinear", scope.fresh(f"{tq.name}_DequantizeLinear"), {},
                                   [quantized, scale, zero], [restored]))
        for reader in readers:
            for i, t in enumerate(reader.inputs):
                if t is tensor:
                    reader.inputs[i] = restored

    before = after = 0
    for layer in placement.layers:
        axis = layer.axis if options.per_channel else None
        w_params = quant.weight_params(layer.weight, axis, bits=bits)
        layer.node.inputs[1] = _dequantized(graph, scope, f"{layer.node.inputs[1].name}",
                                            quant.quantize(layer.weight, w_params), w_params)
        before, after = before + layer.weight.nbytes, after + layer.weight.size
        if layer.bias is None:
            continue
        x_scale = float(grid(placement.tensors[layer.activation].source)[0].scale)
        try:
            values, b_scale = quant.bias_int32(layer.bias, x_scale, w_params.scale)
        except ValueError as e:
            log.debug("%s keeps a float bias: %s", layer.name, e)
            continue
        assert layer.bias_at is not None
        node, index = layer.bias_at
        node.inputs[index] = _dequantized(graph, scope, node.inputs[index].name, values, None,
                                          scale=b_scale, axis=0 if b_scale.ndim else None)
        before, after = before + layer.bias.nbytes, after + values.nbytes
    return {"weight_bytes_before": before, "weight_bytes_after": after}


def _dequantized(graph: gs.Graph, scope: Scope, base: str, values: np.ndarray, params: quant.QuantParams | None,
                 *, scale: np.ndarray | None = None, axis: int | None = None) -> gs.Variable:
    """A DequantizeLinear of the constant ``values`` (int8 weights or int32 bias) and its float output."""
    if params is not None:
        scale, axis, zero = params.scale, params.axis, params.zero_point
    else:
        zero = np.zeros_like(np.asarray(scale), dtype=values.dtype)
    assert scale is not None
    restored = gs.Variable(scope.fresh(f"{base}_dequantized"), dtype=np.float32, shape=list(values.shape))
    inputs = [gs.Constant(scope.fresh(f"{base}_quantized"), np.ascontiguousarray(values)),
              gs.Constant(scope.fresh(f"{base}_scale"), np.asarray(scale, np.float32)),
              gs.Constant(scope.fresh(f"{base}_zero_point"), np.asarray(zero))]
    graph.nodes.append(gs.Node("DequantizeLinear", scope.fresh(f"{base}_DequantizeLinear"),
                               {} if axis is None else {"axis": int(axis)}, inputs, [restored]))
    return restored
