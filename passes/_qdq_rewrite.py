"""The QDQ rewrite of qdq-int8: insert the pairs a placement asks for and quantize weights and biases.

Tensors quantized for every reader get their pair between the producer and the tensor, which keeps its name (so
graph outputs stay as they are); otherwise only the quantized layers (and a residual Add the placement names) read
the DQ. Shared tensors share their scale and zero-point constants, which lets the runtime drop pairs around data
movement. Weights are always int8 initializers behind a DQ; biases of layers placed with ``int32_bias`` off stay
float (``_qdq_targets``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.graph import Scope
from graphopt_passes import _qdq_plan as plan
from graphopt_passes._math import quant

__all__ = ["Grids", "rewrite"]

log = logging.getLogger(__name__)


class Grids:
    """The activation grid of each range source, built once so that shared tensors share constants too."""

    def __init__(self, ranges: Mapping[str, tuple[float, float]], *, signed: bool) -> None:
        self.ranges, self.signed = ranges, signed
        self._params: dict[str, quant.QuantParams] = {}

    def params(self, source: str) -> quant.QuantParams:
        if source not in self._params:
            self._params[source] = quant.activation_params(*self.ranges[source], signed=self.signed)
        return self._params[source]


def rewrite(graph: gs.Graph, scope: Scope, placement: plan.Placement, grids: Grids,
             shifts: dict[str, np.ndarray], weight_params: Callable[[plan.Layer], quant.QuantParams]) -> dict[str, int]:
    """Insert the pairs of ``placement`` and quantize its layers' weights and (corrected) biases."""
    tensors = graph.tensors()
    constants: dict[str, tuple[gs.Constant, gs.Constant]] = {}
    layer_nodes: dict[str, list[gs.Node]] = {layer.activation: [] for layer in placement.layers}
    for layer in placement.layers:
        layer_nodes[layer.activation].append(layer.node)
    for tq in placement.tensors.values():
        if tq.source not in constants:
            params = grids.params(tq.source)
            constants[tq.source] = (gs.Constant(scope.fresh(f"{tq.source}_scale"), np.asarray(params.scale)),
                                    gs.Constant(scope.fresh(f"{tq.source}_zero_point"), np.asarray(params.zero_point)))
        scale, zero = constants[tq.source]
        tensor = tensors[tq.name]
        quantized = gs.Variable(scope.fresh(f"{tq.name}_quantized"), dtype=zero.values.dtype, shape=tensor.shape)
        if tq.everyone and len(tensor.inputs) == 1:
            producer, raw = tensor.inputs[0], gs.Variable(scope.fresh(f"{tq.name}_float"), tensor.dtype, tensor.shape)
            producer.outputs[producer.outputs.index(tensor)] = raw
            source, restored, readers = raw, tensor, []
        else:
            restored = gs.Variable(scope.fresh(f"{tq.name}_dequantized"), dtype=np.float32, shape=tensor.shape)
            readers = list(tensor.outputs) if tq.everyone else [*layer_nodes.get(tq.name, ()), *tq.readers]
            source = tensor
        graph.nodes.append(gs.Node("QuantizeLinear", scope.fresh(f"{tq.name}_QuantizeLinear"), {},
                                   [source, scale, zero], [quantized]))
        graph.nodes.append(gs.Node("DequantizeLinear", scope.fresh(f"{tq.name}_DequantizeLinear"), {},
                                   [quantized, scale, zero], [restored]))
        for reader in readers:
            for i, t in enumerate(reader.inputs):
                if t is tensor:
                    reader.inputs[i] = restored

    counts = {"biases_corrected": 0, "biases_int32": 0}
    for layer in placement.layers:
        w_params = weight_params(layer)
        layer.node.inputs[1] = _dequantized(graph, scope, layer.node.inputs[1].name,
                                            quant.quantize(layer.weight, w_params), w_params)
        if layer.bias is None or layer.bias_at is None:
            continue
        node, index = layer.bias_at
        bias = layer.bias
        if layer.name in shifts:
            bias = (bias - shifts[layer.name]).astype(np.float32)
            counts["biases_corrected"] += 1
            if not layer.int32_bias:
                node.inputs[index] = gs.Constant(scope.fresh(f"{node.inputs[index].name}_corrected"), bias)
        if not layer.int32_bias:
            continue
        try:
            values, b_scale = quant.bias_int32(bias, float(grids.params(placement.tensors[layer.activation].source)
                                                           .scale), w_params.scale)
        except ValueError as e:
            log.debug("%s keeps a float bias: %s", layer.name, e)
            node.inputs[index] = gs.Constant(scope.fresh(f"{node.inputs[index].name}_corrected"), bias)
            continue
        node.inputs[index] = _dequantized(graph, scope, node.inputs[index].name, values, None,
                                          scale=b_scale, axis=0 if b_scale.ndim else None)
        counts["biases_int32"] += 1
    return counts


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
