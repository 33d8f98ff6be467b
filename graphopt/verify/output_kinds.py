"""What each model output is, read from the graph, so that it is judged by what it means.

Top-1 agreement means something only for class scores. The class axis is found from the graph: an output made by
``Softmax``/``LogSoftmax`` has its classes on that node's axis, and one read by an ``ArgMax`` on that node's axis.
So a sequence head ``[samples, T, C]`` is judged by per-position top-1 (the argmax over C at every position), and a
segmentation map ``[samples, C, H, W]`` per pixel. An output made by ``Sigmoid`` is a probability map (or a
multi-label score): its mask above 0.5 is judged by IoU, sample by sample. Outputs the graph says nothing about fall
back to the shape heuristic (``[samples, 2…256]``), except those named like regression heads (boxes, landmarks,
offsets…) and the raw outputs of a model that makes its scores into probabilities itself (MTCNN's box and landmark
heads beside its Softmax), which are never judged by top-1: an argmax over four box coordinates carries no meaning.

What the graph does not say, the user does, per output (``parse_output_kind``): ``classes:AXIS`` (raw CTC logits
``[T, 1, C]`` have no Softmax), ``mask:THRESHOLD`` (a detector's own threshold), or ``values`` (no top-1, no mask).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import helper

from graphopt.errors import OutputKindError
from graphopt.graph import default_opset
from graphopt.verify.metrics import HEURISTIC, ClassAxis

__all__ = ["DEFAULT_MASK_THRESHOLD", "OutputKind", "output_kinds", "parse_output_kind"]

DEFAULT_MASK_THRESHOLD = 0.5
"""Where a Sigmoid output's mask is cut when the user names no threshold."""

_SCORE_OPS = {"Softmax", "LogSoftmax"}
_REGRESSION_WORDS = frozenset({
    "box", "boxes", "bbox", "bboxes", "landmark", "landmarks", "lmk", "loc", "locs", "reg", "regression", "coord",
    "coords", "offset", "offsets", "delta", "deltas", "keypoint", "keypoints", "kps", "pose", "depth", "disparity",
})
_SCORE_WORDS = frozenset({"logit", "logits", "score", "scores", "cls", "class", "classes", "prob", "probs", "conf"})


@dataclass(frozen=True)
class OutputKind:
    """How an output is judged beyond cosine: top-1 agreement along ``class_axis`` (an axis of the output array,
    axis 0 being the samples), not at all (``None``), or by the shape heuristic (``HEURISTIC``); and, with
    ``mask_threshold``, the IoU of its masks above that threshold. ``reason`` says why."""

    class_axis: ClassAxis
    reason: str
    mask_threshold: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"class_axis": self.class_axis, "mask_threshold": self.mask_threshold, "reason": self.reason}


def parse_output_kind(text: str) -> OutputKind:
    """An output kind as the user names it: ``classes`` (classes on the last axis) or ``classes:AXIS`` (an axis
    of the model's output, negative from the end), ``mask`` or ``mask:THRESHOLD``, or ``values`` (judged by cosine
    and error alone)."""
    kind, _, argument = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "values" and not argument:
        return OutputKind(None, "named by the user: values, no top-1")
    if kind == "classes":
        try:
            axis = int(argument) if argument.strip() else -1
        except ValueError:
            raise OutputKindError(f"classes:AXIS takes an integer axis, got {argument!r}") from None
        return OutputKind(axis, f"named by the user: class scores over axis {axis}")
    if kind == "mask":
        try:
            threshold = float(argument) if argument.strip() else DEFAULT_MASK_THRESHOLD
        except ValueError:
            raise OutputKindError(f"mask:THRESHOLD takes a number, got {argument!r}") from None
        if not math.isfinite(threshold):
            raise OutputKindError(f"mask:THRESHOLD takes a finite number, got {argument!r}")
        return OutputKind(None, f"named by the user: probability map, mask above {threshold:g}", threshold)
    raise OutputKindError(f"unknown output kind {text!r} (use classes[:AXIS], mask[:THRESHOLD] or values)")


def output_kinds(model: onnx.ModelProto, named: Mapping[str, OutputKind | str] | None = None
                 ) -> dict[str, OutputKind]:
    """The kind of every graph output of ``model``, by name: read from the graph, except the outputs ``named``
    by the user (kinds or their text, ``parse_output_kind``), which must be outputs of the model."""
    names = [o.name for o in model.graph.output]
    unknown = sorted(set(named or {}) - set(names))
    if unknown:
        raise OutputKindError(f"no output named {', '.join(map(repr, unknown))} (the model's outputs: "
                              f"{', '.join(names[:20])}{' …' if len(names) > 20 else ''})")
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    opset = default_opset(model) or 13
    activated = [o.name for o in model.graph.output if _activated(producers.get(o.name))]
    kinds = {}
    for output in model.graph.output:
        given = (named or {}).get(output.name)
        if given is not None:
            kind = parse_output_kind(given) if isinstance(given, str) else given
            if isinstance(kind.class_axis, int) and output.type.WhichOneof("value") == "tensor_type":
                kind = OutputKind(_from_end(kind.class_axis, output.type.tensor_type), kind.reason,
                                  kind.mask_threshold)
            kinds[output.name] = kind
        else:
            kind = _kind(output, producers.get(output.name), readers.get(output.name, []), opset)
            if kind.class_axis == HEURISTIC and activated and not _words(output.name) & _SCORE_WORDS:
                kind = OutputKind(None, f"raw values beside {activated[0]!r}, which the model makes into scores itself "
                                        "(Softmax or Sigmoid), and not named like scores: boxes, landmarks or features, no top-1")
            kinds[output.name] = kind
    return kinds


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def _activated(producer: onnx.NodeProto | None) -> bool:
    """Whether an output is made by Softmax, LogSoftmax or Sigmoid: a model that turns its scores into
    probabilities itself, whose other raw outputs are then not class scores (a face detector's box and landmark
    heads beside its Softmax)."""
    return producer is not None and producer.domain in ("", "ai.onnx") and producer.op_type in (*_SCORE_OPS, "Sigmoid")


def _kind(output: onnx.ValueInfoProto, producer: onnx.NodeProto | None, readers: list[onnx.NodeProto],
          opset: int) -> OutputKind:
    tensor = output.type.tensor_type
    if output.type.WhichOneof("value") != "tensor_type" or tensor.elem_type not in _FLOAT_TYPES:
        return OutputKind(None, "not a float tensor: compared exactly or per element")
    if producer is not None and producer.domain in ("", "ai.onnx") and producer.op_type in _SCORE_OPS:
        default = -1 if opset >= 13 else 1
        axis = _int_attribute(producer, "axis", default)
        return OutputKind(_from_end(axis, tensor), f"made by {producer.op_type} over axis {axis}: class scores")
    if producer is not None and producer.domain in ("", "ai.onnx") and producer.op_type == "Sigmoid":
        return OutputKind(None, f"made by Sigmoid: probabilities, judged as a mask above {DEFAULT_MASK_THRESHOLD:g} "
                                "(IoU)", DEFAULT_MASK_THRESHOLD)
    argmax = next((n for n in readers if n.op_type == "ArgMax" and n.domain in ("", "ai.onnx")), None)
    if argmax is not None:
        axis = _int_attribute(argmax, "axis", 0)
        return OutputKind(_from_end(axis, tensor), f"read by ArgMax over axis {axis}: class scores")
    words = _words(output.name)
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
