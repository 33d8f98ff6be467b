"""Where QuantizeLinear/DequantizeLinear pairs go so that a QDQ runtime really runs the layers in int8.

The rules follow what onnxruntime's CPU provider fuses (checked against onnxruntime 1.32's QDQ selectors and by
saving optimised graphs); OpenVINO reads the same pattern, TensorRT wants its own (last paragraph):

- A *layer* is a Conv, a Gemm (``transA = 0``) or a MatMul whose second input is a constant 2-D weight, in float32.
  Its activation input gets a Q→DQ pair, its weight becomes int8 behind a DQ (per output channel), its constant
  bias int32 behind a DQ whose scale is ``s_x·s_w`` (the bias Add of a batched MatMul stays float: nothing fuses it,
  and onnxruntime does not fold DQs of constants).
- ``DQ → Conv → Q`` becomes QLinearConv only when every consumer of the Conv's output is a Q, so a quantized Conv's
  output (after a Relu/Clip it owns) is quantized for all its consumers, a graph output included (the pair is put
  between the producer and the output, whose name stays); a Conv whose output a subgraph reads stays float.
- MatMul and Gemm fuse with a float output (MatMulIntegerToFloat, QGemm). Their output is quantized only when a
  quantized layer reads it, and then for every consumer: a Q beside a float consumer blocks the fusion.
- A tensor made by a data-movement op (Reshape, Transpose, MaxPool, …) from a quantized tensor shares its scale and
  zero point, for all consumers, so the runtime moves int8 and drops the pair (exact: these ops commute with DQ).
- Any other float consumer of a quantized input keeps reading the float tensor, so a residual stream is not rounded,
  unless it is itself one of the operators onnxruntime runs in int8 between layers (``_qdq_kernels``: SiLU's Sigmoid
  and Mul, Add, Concat, pools, nearest Resize, Split…) and every input it needs from a DQ is quantized: then it
  joins the int8 *region*, its output quantized for every reader with its own range (or its input's, for data
  movement), as long as the region leads on to a quantized layer. A region is what its layers make it: leave a layer
  in float and the ops it fed fall back to float with it.
- Layers too small for int8 to pay (K or N below ``min_dim``, Convs with few channels) are left in float.
- Layers inside an ``If`` branch are placed by the same rules within the branch (``find_parts``): onnxruntime fuses
  QDQ inside subgraphs too. A ``Loop``/``Scan`` body's layers stay float.

Those are the ``ort-cpu`` rules. ``place`` takes a ``TargetRules`` (``_qdq_targets``, which documents each target):
for ``tensorrt`` only the layers' inputs get pairs, read by the quantized layers alone (no results, no
pass-through sharing, no rerouted graph outputs), biases stay float, and the skip input of a residual Add whose
other input is a quantized Conv's output gets a pair the Add reads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.graph import Scope, constant_array, label, nested_graphs
from graphopt.pass_base import Skip
from graphopt_passes._qdq_kernels import Fusion
from graphopt_passes._qdq_targets import ORT_CPU, TargetRules

__all__ = ["PASS_THROUGH", "Layer", "Placement", "TensorQuant", "find_layers", "place", "range_names",
           "residual_skips"]

PASS_THROUGH = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Slice", "Expand",
                          "Tile", "Gather"})
_OWNED_ACTIVATIONS = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class Layer:
    """A node to run in int8: its activation input, weight (with the per-channel axis), optional bias, and the
    tensor that carries its result (a Conv's owned Relu/Clip output, else its own output)."""

    name: str
    node: gs.Node
    activation: str
    weight: np.ndarray
    axis: int
    bias: np.ndarray | None
    result: str
    op: str
    owns_activation: bool = False
    bias_at: tuple[gs.Node, int] | None = None
    int32_bias: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)


@dataclass(frozen=True)
class TensorQuant:
    """A tensor to quantize: ``source`` names the tensor whose range sets its scale (itself unless shared through
    data movement); ``everyone`` puts the pair between the producer and every consumer (graph outputs too), else
    only the quantized layers, and the non-layer ``readers`` (residual Adds), read the DQ."""

    name: str
    source: str
    everyone: bool
    readers: tuple[gs.Node, ...] = ()


@dataclass
class Placement:
    layers: list[Layer] = field(default_factory=list)
    tensors: dict[str, TensorQuant] = field(default_factory=dict)
    region_tensors: int = 0
    """How many of ``tensors`` are region outputs (operators between layers run in int8)."""


def find_layers(graph: gs.Graph, scope: Scope, *, min_dim: int, nested: bool = True
                ) -> tuple[list[Layer], list[Skip]]:
    """Every node of ``graph`` that could run in int8, and a reason for each MatMul/Gemm/Conv that cannot; with
    ``nested``, a reason for each one in its nested graphs too (``find_parts`` places those of ``If`` branches)."""
    layers: list[Layer] = []
    skipped: list[Skip] = []
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm", "Conv") or node.domain not in (None, "", "ai.onnx"):
            continue
        found = _layer(node, scope, min_dim)
        if isinstance(found, Layer):
            layers.append(found)
        else:
            skipped.append(found)
    skipped += [Skip(label(node), f"inside a subgraph of {owner.op}: only main-graph layers are quantized")
                for owner, sub in nested_graphs(graph) for node in sub.nodes if node.op in ("MatMul", "Gemm", "Conv")
                ] if nested else []
    return layers, skipped


@dataclass(frozen=True)
class Part:
    """A graph whose layers are placed together: the main graph, or an ``If`` branch (with its own scope)."""

    graph: gs.Graph
    scope: Scope
    layers: list[Layer]


def find_parts(graph: gs.Graph, scope: Scope, *, min_dim: int) -> tuple[list[Part], list[Skip]]:
    """The layers of the main graph and of every ``If`` branch, at any depth through ``If`` nodes, each branch
    placed on its own: calibration reads a branch's tensors threaded out of its ``If``
    (``graphopt.activations.tap``), on the samples that take it. Layers in ``Loop``/``Scan`` bodies, whose tensors
    change from one iteration to the next, stay float with a reason."""
    parts: list[Part] = []
    skipped: list[Skip] = []

    def visit(g: gs.Graph, s: Scope) -> None:
        layers, skips = find_layers(g, s, min_dim=min_dim, nested=False)
        parts.append(Part(g, s, layers))
        skipped.extend(skips)
        for node in g.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if not isinstance(sub, gs.Graph):
                        continue
                    if node.op == "If":
                        visit(sub, s.within(sub))
                        continue
                    skipped.extend(Skip(label(n), f"inside a {node.op} body: its tensors change per iteration, so "
                                                  "its layers stay float")
                                   for _, body in [(node, sub), *nested_graphs(sub)] for n in body.nodes
                                   if n.op in ("MatMul", "Gemm", "Conv"))

    visit(graph, scope)
    return parts, skipped


def _layer(node: gs.Node, scope: Scope, min_dim: int) -> Layer | Skip:
    name = label(node)
    if len(node.inputs) < 2:
        return Skip(name, "missing inputs")
    x, w = node.inputs[0], node.inputs[1]
    weight = constant_array(w)
    if weight is None:
        return Skip(name, "no constant weight as second input (activation × activation MatMuls stay float)")
    if constant_array(x) is not None:
        return Skip(name, "both inputs are constants (constant folding's job)")
    if weight.dtype != np.float32 or x.dtype not in (None, np.float32):
        return Skip(name, f"weight dtype {weight.dtype} is not float32")
    if len(w.outputs) > 1 and any(c.op != node.op for c in w.outputs):
        return Skip(name, f"weight '{w.name}' is shared with other kinds of nodes")
    if w.name in scope.outer:
        return Skip(name, f"weight '{w.name}' is shared with a nested or enclosing graph")
    bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if len(node.inputs) > 2 and node.inputs[2].name and (bias is None or bias.ndim != 1):
        return Skip(name, "bias is not a constant vector")
    if node.op == "MatMul":
        if weight.ndim != 2:
            return Skip(name, f"weight is {weight.ndim}-D, not a matrix")
        k, n, axis = *weight.shape, 1
    elif node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return Skip(name, "Gemm with transA=1")
        if bias is not None and float(node.attrs.get("beta", 1.0)) != 1.0:
            return Skip(name, "Gemm with beta ≠ 1 and a bias")
        trans = int(node.attrs.get("transB", 0))
        n, k = weight.shape if trans else weight.shape[::-1]
        axis = 0 if trans else 1
    else:
        if weight.ndim < 3:
            return Skip(name, "Conv weight rank < 3")
        n, k, axis = weight.shape[0], int(np.prod(weight.shape[1:])), 0
    if k < min_dim or n < min_dim:
        return Skip(name, f"too small for int8 to pay off: reduction {k}, outputs {n} (min_dim {min_dim})")
    tail, bias_at = node.outputs[0], ((node, 2) if bias is not None else None)
    if node.op == "MatMul":
        found = _bias_add(tail, n, scope)
        if found is not None:
            bias_at, bias, tail = (found, 1 - found.inputs.index(tail)), _bias_of(found, tail), found.outputs[0]
    result, owned = tail, _owned_activation(tail, scope)
    if owned is not None:
        result = owned.outputs[0]
    if node.op == "Conv" and result.name in scope.outer:
        return Skip(name, "Conv output is read by a subgraph: onnxruntime could not fuse it")
    fusable_bias = node.op != "MatMul" or (x.shape is not None and len(x.shape) == 2)
    return Layer(name, node, x.name, weight, axis, bias, result.name, node.op, owned is not None, bias_at,
                 fusable_bias)


def _bias_add(output: gs.Tensor, n: int, scope: Scope) -> gs.Node | None:
    """The Add of a constant length-N vector that alone reads a MatMul's output: its bias. For a 2-D MatMul, an
    int32 bias behind a DQ lets onnxruntime fuse MatMul + Add into one int8 Gemm (QGemm), where a float bias would
    leave the fused Gemm float; for batched MatMuls it stays float (a DQ of a constant runs on every call), but bias
    correction still applies to it."""
    if len(output.outputs) != 1 or id(output) in scope.outputs or output.name in scope.outer:
        return None
    add = output.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    bias = _bias_of(add, output)
    return add if bias is not None and bias.shape == (n,) and bias.dtype == np.float32 else None


def _bias_of(add: gs.Node, output: gs.Tensor) -> np.ndarray | None:
    other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
    return constant_array(other)


def _owned_activation(output: gs.Tensor, scope: Scope) -> gs.Node | None:
    """The Relu/Clip with constant bounds that alone reads ``output``: quantizing after it lets the runtime drop it
    (a zero point at the bottom of the grid clips like Relu) and fuse the layer, rather than fuse layer and
    activation in float (Gemm + Relu → FusedGemm) and leave the int8 pattern unmatched."""
    if len(output.outputs) != 1 or id(output) in scope.outputs or output.name in scope.outer:
        return None
    node = output.outputs[0]
    if node.op not in _OWNED_ACTIVATIONS or len(node.outputs) != 1:
        return None
    if not all(constant_array(t) is not None for t in node.inputs[1:] if t.name):
        return None
    result = node.outputs[0]
    return None if id(result) in scope.outputs or result.name in scope.outer else node


def place(graph: gs.Graph, scope: Scope, layers: Collection[Layer], rules: TargetRules = ORT_CPU,
          fusions: Mapping[str, Fusion] | None = None) -> Placement:
    """The tensors to quantize for ``layers`` (already filtered to the selected units) under ``rules``, with the
    int8 regions ``fusions`` allows between them (``_qdq_kernels.int8_fusions``) where ``rules.regions``."""
    placement = Placement(list(layers) if rules.int32_bias else [replace(layer, int32_bias=False) for layer in layers])
    tensors = graph.tensors()
    results = {layer.result for layer in layers if layer.op == "Conv" or layer.owns_activation} \
        if rules.quantize_results else set()
    inputs = {layer.activation for layer in layers}
    blocked = scope.outer
    for name in sorted(results | inputs):
        everyone = rules.quantize_results and (name in results or _produced_by_layer_result(tensors[name], layers))
        placement.tensors[name] = TensorQuant(name, name, everyone and name not in blocked)
    for name, adds in residual_skips(graph, scope, layers).items() if rules.residual_skip else ():
        known = placement.tensors.get(name)
        placement.tensors[name] = replace(known, readers=(*known.readers, *adds)) if known is not None \
            else TensorQuant(name, name, False, tuple(adds))
    for name in sorted(inputs):  # only reaches rerouted (everyone) tensors, which quantize_results alone makes
        chain = _pass_through_chain(tensors[name], placement, blocked)
        if chain:
            source = placement.tensors[chain[0].inputs[0].name].source if chain[0].inputs[0].name in \
                placement.tensors else chain[0].inputs[0].name
            for node in chain:
                out = node.outputs[0].name
                placement.tensors[out] = TensorQuant(out, source, True)
    if rules.regions and fusions:
        regions = _regions(graph, scope, placement, layers, fusions)
        placement.tensors.update(regions)
        placement.region_tensors = len(regions)
    return placement


def _regions(graph: gs.Graph, scope: Scope, placement: Placement, layers: Collection[Layer],
             fusions: Mapping[str, Fusion]) -> dict[str, TensorQuant]:
    """The outputs of the nodes that run in int8 between the quantized tensors of ``placement`` and the layers that
    read them: grown forward in graph order from every tensor quantized for all its readers through nodes whose
    ``fusions`` rule finds every input it needs quantized, then kept only where they lead on to a layer's input (a
    region's tail into a graph output or a float reader would round it for nothing)."""
    quantized = {name: tq.source for name, tq in placement.tensors.items() if tq.everyone}
    grown: list[tuple[gs.Node, list[str], str | None]] = []
    for node in graph.nodes:
        fusion = fusions.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if fusion is None or not _runs_in_int8(node, scope):
            continue
        needed = [t for t in node.inputs if t.name] if fusion.inputs == "all" else node.inputs[:1]
        if not needed or any(t.name not in quantized for t in needed):
            continue
        shared = quantized[needed[0].name] if fusion.scale == "shared" else None
        outputs = [out.name for out in node.outputs]
        quantized.update({name: shared or name for name in outputs})
        grown.append((node, outputs, shared))
    reads = {layer.activation for layer in layers}
    useful: set[str] = set()
    for node, outputs, _ in reversed(grown):  # a node leads on when a layer or a node that leads on reads it
        if any(name in reads or any(out.name in useful for reader in tensor.outputs for out in reader.outputs)
               for name, tensor in zip(outputs, node.outputs, strict=True)):
            useful.update(outputs)
    return {name: TensorQuant(name, shared or name, True)
            for _, outputs, shared in grown for name in outputs if name in useful}


def _runs_in_int8(node: gs.Node, scope: Scope) -> bool:
    """Whether ``node`` can be a fused or data-moving int8 op: float32 outputs that no subgraph reads, and a Resize
    in nearest mode (onnxruntime leaves a linear one float)."""
    if not node.inputs or not node.outputs or any(out.name in scope.outer or out.dtype not in (None, np.float32)
                                                  for out in node.outputs):
        return False
    return node.op != "Resize" or str(node.attrs.get("mode", "nearest")) == "nearest"


def range_names(graph: gs.Graph, scope: Scope, layers: Collection[Layer], rules: TargetRules = ORT_CPU,
                fusions: Mapping[str, Fusion] | None = None) -> list[str]:
    """The tensors whose ranges calibration measures so that any selection of ``layers`` can be placed: those that
    set a scale when every layer is placed (a region only grows with more layers)."""
    names = {layer.activation for layer in layers}
    names |= {layer.result for layer in layers} if rules.quantize_results else set()
    names |= set(residual_skips(graph, scope, layers)) if rules.residual_skip else set()
    if rules.regions and fusions:
        names |= {tq.source for tq in place(graph, scope, layers, rules, fusions).tensors.values()}
    return sorted(names)


def residual_skips(graph: gs.Graph, scope: Scope, layers: Collection[Layer]) -> dict[str, list[gs.Node]]:
    """The skip inputs of residual Adds, each with the Adds that read it.

    A residual Add sums two distinct float activations of the same shape, one of them the output of a quantized
    Conv that only this Add reads (the main branch the runtime fuses into the Conv); the other is the skip input.
    When both inputs qualify (a projection shortcut), the first is the main branch.
    """
    convs = {id(layer.node.outputs[0]) for layer in layers if layer.op == "Conv"}
    found: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op != "Add" or node.domain not in (None, "", "ai.onnx") or len(node.inputs) != 2:
            continue
        first, second = node.inputs
        if first is second or any(constant_array(t) is not None or t.dtype not in (None, np.float32)
                                  for t in (first, second)):
            continue
        if first.shape is not None and second.shape is not None and list(first.shape) != list(second.shape):
            continue  # a broadcast Add is not the element-wise residual the runtime fuses
        main = next((t for t in (first, second) if id(t) in convs and len(t.outputs) == 1
                     and id(t) not in scope.outputs and t.name not in scope.outer), None)
        if main is not None:
            found.setdefault((second if main is first else first).name, []).append(node)
    return found


def _produced_by_layer_result(tensor: gs.Tensor, layers: Collection[Layer]) -> bool:
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return producer is not None and any(layer.node is producer for layer in layers)


def _pass_through_chain(tensor: gs.Tensor, placement: Placement, blocked: set[str]) -> list[gs.Node]:
    """The data-movement nodes from a quantized, everyone-rerouted tensor down to ``tensor``, or ``[]``."""
    chain: list[gs.Node] = []
    current = tensor
    while len(current.inputs) == 1 and current.inputs[0].op in PASS_THROUGH and current.name not in blocked:
        node = current.inputs[0]
        if len(node.outputs) != 1 or not node.inputs or (node.op == "Gather" and constant_array(node.inputs[0]) is not None):
            return []
        chain.insert(0, node)
        upstream = placement.tensors.get(node.inputs[0].name)
        if upstream is not None and upstream.everyone:
            return chain
        current = node.inputs[0]
    return []
