"""Dynamic int8 for weight MatMuls: activations quantized per call, for models whose static ranges are hopeless.

``DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q) → Cast → Mul(s_x·s_w)`` is the pattern onnxruntime fuses into
one DynamicQuantizeMatMul kernel (the form its own ``quantize_dynamic`` writes). The activation's range is measured
on every call, so nothing is calibrated; the weights are the same per-column int8 (7-bit without VNNI) as in
static mode. A range measured over a batch is at least as wide as over any one of its samples, so the grid the
manager verifies on batches is never finer than the one a batch-1 deployment gets. Convolutions are left float:
ConvInteger is several times slower than float convolution on CPUs (3–5× in ``benchmarks/bench_qdq.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.graph import Scope
from graphopt_passes import _qdq_plan as plan
from graphopt_passes._math import quant

__all__ = ["rewrite_dynamic"]


def rewrite_dynamic(graph: gs.Graph, scope: Scope, layers: Sequence[plan.Layer],
                    weight_params: Callable[[plan.Layer], quant.QuantParams]) -> None:
    """Replace each MatMul of ``layers`` by the dynamic int8 pattern, one DynamicQuantizeLinear per activation."""
    tensors = graph.tensors()
    quantized: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
    for layer in layers:
        if layer.activation not in quantized:
            base = layer.activation
            outs = (gs.Variable(scope.fresh(f"{base}_quantized"), np.uint8),
                    gs.Variable(scope.fresh(f"{base}_scale"), np.float32, shape=[]),
                    gs.Variable(scope.fresh(f"{base}_zero_point"), np.uint8, shape=[]))
            graph.nodes.append(gs.Node("DynamicQuantizeLinear", scope.fresh(f"{base}_DynamicQuantizeLinear"), {},
                                       [tensors[base]], list(outs)))
            quantized[base] = outs
        x_q, x_scale, x_zero = quantized[layer.activation]
        params = weight_params(layer)
        node, name = layer.node, layer.name
        weight_name = node.inputs[1].name
        w_q = gs.Constant(scope.fresh(f"{weight_name}_quantized"), np.ascontiguousarray(quant.quantize(layer.weight,
                                                                                                      params)))
        w_zero = gs.Constant(scope.fresh(f"{weight_name}_zero_point"), np.asarray(params.zero_point))
        w_scale = gs.Constant(scope.fresh(f"{weight_name}_scale"), np.asarray(params.scale))
        product = gs.Variable(scope.fresh(f"{name}_int32"), np.int32)
        as_float = gs.Variable(scope.fresh(f"{name}_float"), np.float32)
        scale = gs.Variable(scope.fresh(f"{name}_scale"), np.float32)
        output = node.outputs[0]
        node.outputs.clear()
        graph.nodes += [
            gs.Node("MatMulInteger", scope.fresh(f"{name}_MatMulInteger"), {}, [x_q, w_q, x_zero, w_zero], [product]),
            gs.Node("Cast", scope.fresh(f"{name}_Cast"), {"to": onnx.TensorProto.FLOAT}, [product], [as_float]),
            gs.Node("Mul", scope.fresh(f"{name}_scales"), {}, [x_scale, w_scale], [scale]),
            gs.Node("Mul", scope.fresh(f"{name}_rescale"), {}, [as_float, scale], [output]),
        ]
