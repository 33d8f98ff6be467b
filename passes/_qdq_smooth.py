"""SmoothQuant for qdq-int8: fold per-channel scales into a LayerNormalization and the matrix products it feeds.

``LayerNorm(x)·diag(1/s)`` is a LayerNorm whose scale and bias are divided by ``s``, so the smoothing costs nothing
at run time when every reader of the LayerNorm output is a quantized MatMul/Gemm whose weight rows absorb ``s``.
When something else reads it too (a post-LN transformer's residual Add), smoothing would change that reader, so the
group is skipped with the reason. The rewrite is exact in float; the manager still verifies the quantized result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.graph import Scope, constant_array, editing, label
from graphopt.pass_base import Skip
from graphopt_passes._qdq_plan import Layer

__all__ = ["SmoothGroup", "apply_smoothing", "find_groups"]


@dataclass(frozen=True)
class SmoothGroup:
    """A LayerNormalization whose output only quantizable matrix products read; ``weights`` are their K×N forms."""

    norm: str
    tensor: str
    readers: tuple[str, ...]
    weights: tuple[np.ndarray, ...]


def find_groups(graph: gs.Graph, scope: Scope, layers: Sequence[Layer]) -> tuple[list[SmoothGroup], list[Skip]]:
    by_node = {id(layer.node): layer for layer in layers}
    groups, skipped = [], []
    for node in graph.nodes:
        if node.op != "LayerNormalization" or len(node.inputs) < 2:
            continue
        out = node.outputs[0]
        gamma = constant_array(node.inputs[1])
        readers = [by_node.get(id(reader)) for reader in out.outputs]
        why = ""
        if gamma is None or gamma.ndim != 1 or int(node.attrs.get("axis", -1)) not in (-1, len(out.shape or []) - 1):
            why = "scale is not a constant vector over the last axis"
        elif id(out) in scope.outputs or out.name in scope.outer:
            why = "output is a graph output or read by a subgraph"
        elif not readers or any(r is None or r.op == "Conv" or r.activation != out.name for r in readers):
            others = sorted({reader.op for reader, r in zip(out.outputs, readers, strict=True) if r is None})
            why = f"output is also read by {', '.join(others) or 'a non-matrix layer'}: smoothing would change it"
        if why:
            skipped.append(Skip(label(node), f"no smoothing: {why}"))
            continue
        weights = tuple(_matrix(r) for r in readers if r is not None)
        groups.append(SmoothGroup(label(node), out.name, tuple(r.name for r in readers if r is not None), weights))
    return groups, skipped


def _matrix(layer: Layer) -> np.ndarray:
    trans = layer.op == "Gemm" and bool(layer.node.attrs.get("transB", 0))
    return layer.weight.T if trans else layer.weight


def apply_smoothing(model: onnx.ModelProto, scales: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with each LayerNorm output (by tensor name) divided by its scales and its readers' weights
    multiplied by them."""
    with editing(model) as edit:
        scope = Scope.of(edit.graph)
        tensors = edit.graph.tensors()
        for name, s in scales.items():
            out = tensors[name]
            norm = out.inputs[0]
            for index in (1, 2)[: len(norm.inputs) - 1]:
                value = constant_array(norm.inputs[index])
                if value is not None:
                    norm.inputs[index] = gs.Constant(scope.fresh(f"{norm.inputs[index].name}_smoothed"),
                                                     (value / s).astype(value.dtype))
            for reader in list(out.outputs):
                weight = constant_array(reader.inputs[1])
                assert weight is not None
                trans = reader.op == "Gemm" and bool(reader.attrs.get("transB", 0))
                scaled = weight * (s[None, :] if trans else s[:, None])
                reader.inputs[1] = gs.Constant(scope.fresh(f"{reader.inputs[1].name}_smoothed"),
                                               scaled.astype(weight.dtype))
    return edit.model
