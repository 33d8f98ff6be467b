"""What a model is made of: opset, inputs and outputs, operator histogram, parameter count and size.

Used by ``graphopt inspect`` and by the report (before → after figures). Counting reads tensor dims only, so it is
cheap even for models with large weights.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import onnx

from graphopt._proto import model_size
from graphopt.graph import default_opset

__all__ = ["ModelSummary", "count_params", "summarize"]


@dataclass(frozen=True)
class ModelSummary:
    """A model at a glance; ``size_bytes`` is the serialised size including weights."""

    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    ops: dict[str, int]
    nodes: int
    params: int
    size_bytes: int

    @property
    def opset(self) -> int:
        return self.opsets.get("", 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: onnx.ModelProto) -> int:
    """Number of weight elements: initializers plus ``Constant`` node tensors of the main graph, sparse ones
    counted at their dense size (their zeros are weights too)."""
    total = sum(math.prod(t.dims) for t in (*model.graph.initializer, *model.graph.sparse_initializer))
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(math.prod(a.t.dims) for a in node.attribute if a.name == "value")
            total += sum(math.prod(a.sparse_tensor.dims) for a in node.attribute if a.name == "sparse_value")
    return total


def summarize(model: onnx.ModelProto) -> ModelSummary:
    def value(v: onnx.ValueInfoProto) -> dict[str, Any]:
        kind = v.type.WhichOneof("value")
        if kind != "tensor_type":
            return {"name": v.name, "type": kind or "unknown"}
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        try:
            type_name = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except KeyError:  # an element type this onnx does not know (a corrupt or future model): shown, not fatal
            type_name = f"unknown element type {t.elem_type}"
        return {"name": v.name, "type": type_name, "shape": dims}

    initializers = {i.name for i in model.graph.initializer}
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph.node)
    return ModelSummary(
        ir_version=model.ir_version,
        opsets={(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import} | {"": default_opset(model)},
        inputs=[value(v) for v in model.graph.input if v.name not in initializers],
        outputs=[value(v) for v in model.graph.output],
        ops=dict(ops.most_common()),
        nodes=len(model.graph.node),
        params=count_params(model),
        size_bytes=model_size(model),
    )
