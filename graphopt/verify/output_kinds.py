"""What each model output is, read from the graph, so that it is judged by what it means.

Top-1 agreement means something only for class scores. The class axis is found from the graph: an output made by
``Softmax``/``LogSoftmax`` has its classes on that node's axis, and one read by an ``ArgMax`` on that node's axis.
So a sequence head ``[samples, T, C]`` is judged by per-position top-1 (the argmax over C at every position), and a
segmentation map ``[samples, C, H, W]`` per pixel. Outputs the graph says nothing about fall back to the shape
heuristic (``[samples, 2…256]``), except those named like regression heads (boxes, landmarks, offsets…), which are
never judged by top-1: an argmax over four box coordinates carries no meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx
from onnx import helper

from graphopt.graph import default_opset
from graphopt.verify.metrics import HEURISTIC, ClassAxis

__all__ = ["OutputKind", "output_kinds"]

_SCORE_OPS = {"Softmax", "LogSoftmax"}
_REGRESSION_WORDS = frozenset({
    "box", "boxes", "bbox", "bboxes", "landmark", "landmarks", "lmk", "loc", "locs", "reg", "regression", "coord",
    "coords", "offset", "offsets", "delta", "deltas", "keypoint", "keypoints", "kps", "pose", "depth", "disparity",
})


@dataclass(frozen=True)
class OutputKind:
    """How an output's top-1 agreement is judged: along ``class_axis`` (an axis of the output array, axis 0 being
    the samples), not at all (``None``), or by the shape heuristic (``HEURISTIC``); ``reason`` says why."""

    class_axis: ClassAxis
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"class_axis": self.class_axis, "reason": self.reason}


def output_kinds(model: onnx.ModelProto) -> dict[str, OutputKind]:
    """The kind of every graph output of ``model``, by name."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    opset = default_opset(model) or 13
    kinds = {}
    for output in model.graph.output:
        kinds[output.name] = _kind(output, producers.get(output.name), readers.get(output.name, []), opset)
    return kinds


def _kind(output: onnx.ValueInfoProto, producer: onnx.NodeProto | None, readers: list[onnx.NodeProto],
          opset: int) -> OutputKind:
    tensor = output.type.tensor_type
    if output.type.WhichOneof("value") != "tensor_type" or tensor.elem_type not in _FLOAT_TYPES:
        return OutputKind(None, "not a float tensor: compared exactly or per element")
    if producer is not None and producer.domain in ("", "ai.onnx") and producer.op_type in _SCORE_OPS:
        default = -1 if opset >= 13 else 1
        axis = _int_attribute(producer, "axis", default)
        return OutputKind(_from_end(axis, tensor), f"made by {producer.op_type} over axis {axis}: class scores")
    argmax = next((n for n in readers if n.op_type == "ArgMax" and n.domain in ("", "ai.onnx")), None)
    if argmax is not None:
        axis = _int_attribute(argmax, "axis", 0)
        return OutputKind(_from_end(axis, tensor), f"read by ArgMax over axis {axis}: class scores")
    words = set(re.split(r"[^a-z0-9]+", output.name.lower()))
    if words & _REGRESSION_WORDS:
        return OutputKind(None, f"named like a regression head ({', '.join(sorted(words & _REGRESSION_WORDS))}): "
                                "no top-1")
    return OutputKind(HEURISTIC, "no Softmax or ArgMax at it: top-1 if shaped [samples, 2…256]")


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return int(helper.get_attribute_value(found)) if found is not None else default


def _from_end(axis: int, tensor: onnx.TypeProto.Tensor) -> int:
    """A node's axis counted from the end (-1 = last), which names the same axis whether the verifier's arrays
    carry the samples on the model's batch axis or stacked on a new axis 0; a positive axis of an output of
    unknown rank is kept as it is."""
    if axis < 0 or not tensor.HasField("shape"):
        return axis
    return axis - len(tensor.shape.dim)
