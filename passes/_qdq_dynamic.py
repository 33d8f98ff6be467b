"""Dynamic int8 for weight MatMuls and LSTMs: activations quantized per call, for models whose static ranges are
hopeless, and for recurrent layers, which have no static int8 kernel.

``DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q) → Cast → Mul(s_x·s_w)`` is the pattern onnxruntime fuses into
one DynamicQuantizeMatMul kernel (the form its own ``quantize_dynamic`` writes). The activation's range is measured
on every call, so nothing is calibrated; the weights are the same per-column int8 (7-bit without VNNI) as in
static mode. A range measured over a batch is at least as wide as over any one of its samples, so the grid the
manager verifies on batches is never finer than the one a batch-1 deployment gets. Convolutions are left float:
ConvInteger is several times slower than float convolution on CPUs (3–5× in ``benchmarks/bench_qdq.py``).

An LSTM with constant weights becomes onnxruntime's ``com.microsoft`` DynamicQuantizeLSTM, which runs both its
input and its recurrent products in int8, each activation quantized as it comes: the weights ``W`` and ``R`` are
stored transposed (``[directions, input, 4·hidden]``) with one symmetric scale per direction and gate row, the same
per-column grid as a MatMul's. Its other inputs and attributes are the LSTM's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.graph import Scope, constant_array, label
from graphopt.pass_base import Skip
from graphopt_passes import _qdq_plan as plan
from graphopt_passes._math import quant

__all__ = ["Recurrent", "find_recurrent", "rewrite_dynamic", "rewrite_recurrent"]

_LSTM_INPUTS = 8
"""X, W, R, B, sequence_lens, initial_h, initial_c, P: DynamicQuantizeLSTM's first inputs, then the weight grids."""


@dataclass(frozen=True)
class Recurrent:
    """An LSTM whose input weights ``W`` ([directions, 4·hidden, input]) and recurrent weights ``R``
    ([directions, 4·hidden, hidden]) are constants, so that both can be stored in int8."""

    name: str
    node: gs.Node
    input_weight: np.ndarray
    recurrent_weight: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.input_weight.shape)


def find_recurrent(graph: gs.Graph, *, min_dim: int) -> tuple[list[Recurrent], list[Skip]]:
    """The LSTMs of ``graph`` (not of its nested graphs) that DynamicQuantizeLSTM can run, and a reason for each
    other one."""
    found: list[Recurrent] = []
    skipped: list[Skip] = []
    for node in graph.nodes:
        if node.op != "LSTM" or node.domain not in (None, "", "ai.onnx"):
            continue
        name = label(node)
        w, r = (constant_array(node.inputs[i]) if len(node.inputs) > i else None for i in (1, 2))
        x_type = node.inputs[0].dtype if node.inputs else None
        if w is None or r is None:
            skipped.append(Skip(name, "LSTM weights W and R are not both constants"))
        elif any(a.dtype != np.float32 or a.ndim != 3 for a in (w, r)) or x_type not in (None, np.float32):
            skipped.append(Skip(name, "LSTM is not float32"))
        elif node.attrs.get("layout", 0) != 0:
            skipped.append(Skip(name, "LSTM layout=1 (batch first): DynamicQuantizeLSTM takes sequence-first input"))
        elif min(w.shape[2], r.shape[2]) < min_dim:
            skipped.append(Skip(name, f"too small for int8 to pay off: input {w.shape[2]}, hidden {r.shape[2]} "
                                      f"(min_dim {min_dim})"))
        else:
            found.append(Recurrent(name, node, w, r))
    return found, skipped


def rewrite_recurrent(graph: gs.Graph, scope: Scope, layers: Sequence[Recurrent], bits: int) -> None:
    """Turn each LSTM of ``layers`` into a DynamicQuantizeLSTM with ``bits``-wide symmetric weights, one scale per
    direction and gate row."""
    for layer in layers:
        node = layer.node
        grids: list[gs.Constant] = []
        stored: list[gs.Constant] = []
        for weight, tensor in ((layer.input_weight, node.inputs[1]), (layer.recurrent_weight, node.inputs[2])):
            params = [quant.weight_params(direction, 0, bits=bits) for direction in weight]
            values = np.stack([quant.quantize(d, p).T for d, p in zip(weight, params, strict=True)])
            stored.append(gs.Constant(scope.fresh(f"{tensor.name}_quantized"), np.ascontiguousarray(values)))
            grids += [gs.Constant(scope.fresh(f"{tensor.name}_scale"), np.stack([p.scale for p in params])),
                      gs.Constant(scope.fresh(f"{tensor.name}_zero_point"), np.stack([p.zero_point for p in params]))]
        inputs = [*node.inputs, *(gs.Variable.empty() for _ in range(_LSTM_INPUTS - len(node.inputs)))]
        inputs[1:3] = stored
        node.inputs.clear()  # in place: graphsurgeon keeps each tensor's readers in step with this list
        node.inputs.extend([*inputs, *grids])
        node.op, node.domain = "DynamicQuantizeLSTM", "com.microsoft"
        node.attrs.pop("layout", None)


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
