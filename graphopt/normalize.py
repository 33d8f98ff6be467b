"""Normalisation: the canonical form passes expect, verified lossless like any pass.

``NormalizePass`` turns main-graph ``Constant`` nodes into initializers, removes dead nodes, sorts the graph
topologically and runs shape inference; it leaves opsets, subgraphs and custom domains as they are. The shapes are
for the passes: ``DropInferredShapesPass`` ends a pipeline by removing the ones the input model did not carry, since
onnxruntime fuses differently with them (all-MiniLM-L6-v2 with inferred shapes gets ``SkipLayerNormalization``
fused and runs 6–7% slower on AVX2 CPUs).
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from graphopt.errors import first_line
from graphopt.graph import copy_model, editing, subgraphs
from graphopt.pass_base import PassBase, PassContext, PassResult, Skip

__all__ = ["DropInferredShapesPass", "NormalizePass"]

log = logging.getLogger(__name__)

_CONSTANT_VALUE_ATTRIBUTES = ("value", "value_float", "value_floats", "value_int", "value_ints")


class NormalizePass(PassBase):
    """Constant nodes to initializers, dead-node cleanup, topological sort and shape inference."""

    name = "normalize"
    lossless = True

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        skipped: list[Skip] = []
        model = copy_model(model)
        dynamic = _negative_dims_to_dynamic(model)
        converted = _constants_to_initializers(model, skipped)
        nodes_before = len(model.graph.node)
        order_before = [n.output[0] if n.output else n.name for n in model.graph.node]
        try:
            with editing(model) as edit:
                pass
        except Exception as e:  # noqa: BLE001 - graphsurgeon cannot import every model; normalisation is partial
            skipped.append(Skip("graph", f"cleanup and sort skipped: {first_line(e)}"))
            stats = {"constants_to_initializers": converted, "negative_dims_to_dynamic": dynamic}
            return PassResult(model, converted > 0 or dynamic > 0, stats, tuple(skipped))
        normalized = edit.model
        removed = nodes_before - len(normalized.graph.node)
        reordered = [n.output[0] if n.output else n.name for n in normalized.graph.node] != order_before
        shapes = len(normalized.graph.value_info) - len(model.graph.value_info)
        stats = {"constants_to_initializers": converted, "negative_dims_to_dynamic": dynamic,
                 "dead_nodes_removed": removed, "shapes_inferred": shapes}
        modified = converted > 0 or dynamic > 0 or removed > 0 or reordered or shapes > 0
        return PassResult(normalized, modified, stats, tuple(skipped))


class DropInferredShapesPass(PassBase):
    """Remove main-graph shape annotations (``value_info``) that the input model did not carry, so the saved model
    differs from the input by the passes' rewrites only, not by what onnxruntime chooses to fuse.

    The function is unchanged, but onnxruntime fuses other kernels without the shapes; after int8/int4 rewrites
    their rounding differs by more than the lossless tolerance (MiniLM with int4 MatMuls: 3e-3), so the budget
    against the original judges this step (``same_rounding = False``)."""

    name = "drop-inferred-shapes"
    lossless = True
    same_rounding = False

    def __init__(self, keep: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.keep = keep

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        kept = [v for v in model.graph.value_info if v.name in self.keep]
        dropped = len(model.graph.value_info) - len(kept)
        if not dropped:
            return PassResult(model, False, {"shapes_dropped": 0})
        out = copy_model(model)
        del out.graph.value_info[:]
        out.graph.value_info.extend(kept)
        return PassResult(out, True, {"shapes_dropped": dropped})


def _negative_dims_to_dynamic(model: onnx.ModelProto) -> int:
    """Clear negative ``dim_value``s (PaddlePaddle exports declare dynamic dims as -1) in the declared shapes of
    every graph, in place, leaving the dims unknown, as onnxruntime reads them; returns how many were cleared.
    Without this, onnx's shape inference takes -1 for a size and the full check fails on the input itself."""
    cleared = 0
    for graph in subgraphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
                continue
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()
                    cleared += 1
    return cleared


def _constants_to_initializers(model: onnx.ModelProto, skipped: list[Skip]) -> int:
    """Move main-graph ``Constant`` tensors into initializers, in place; returns how many moved."""
    if model.ir_version < 4:
        skipped.append(Skip("graph", "IR version < 4 needs initializers listed as inputs; Constant nodes kept"))
        return 0
    outputs = {o.name for o in model.graph.output}
    kept, moved = [], 0
    for node in model.graph.node:
        attribute = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if node.domain in ("", "ai.onnx") and attribute is not None and attribute.name in _CONSTANT_VALUE_ATTRIBUTES:
            if node.output[0] in outputs:
                skipped.append(Skip(node.output[0], "Constant feeds a graph output directly; kept as a node"))
            else:
                model.graph.initializer.append(_constant_tensor(attribute, node.output[0]))
                moved += 1
                continue
        kept.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return moved


def _constant_tensor(attribute: onnx.AttributeProto, name: str) -> onnx.TensorProto:
    if attribute.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = name
        return tensor
    value = helper.get_attribute_value(attribute)
    dtype = onnx.TensorProto.FLOAT if attribute.name.startswith("value_float") else onnx.TensorProto.INT64
    dims = [len(value)] if isinstance(value, list) else []
    return helper.make_tensor(name, dtype, dims, value if isinstance(value, list) else [value])
