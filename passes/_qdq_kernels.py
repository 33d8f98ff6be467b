"""Which operators between quantized layers onnxruntime's CPU provider runs in int8, and on what terms.

Two sources, because onnxruntime exposes one and not the other:

- **Its kernel registry** (``int8_kernels``, read from the installed onnxruntime as the float16 pass reads its
  float16 kernels): an operator is only a candidate where the kernel that would run it exists, an ONNX op with a
  uint8 type constraint at the model's opset, or a ``com.microsoft`` ``QLinear*`` op. QLinearConcat,
  QLinearAveragePool and QLinearGlobalAveragePool are registered without type constraints, so ``QLinear*`` kernels
  are taken by name.
- **Its QDQ fusion rules** (``FUSIONS``), which are C++ selectors that no API lists: a small table, checked against
  onnxruntime 1.32 (``qdq_selector_action_transformer.cc`` and by saving optimised graphs of each pattern):

  - *Shared scale*: data movement (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Expand, Tile, Gather,
    GatherElements), MaxPool, Split and Resize in ``nearest`` mode (a linear Resize stays float) run on the uint8
    tensor once the DQ before and the Q after carry the same scale and zero point; their outputs share their data
    input's scale (exact: these ops commute with dequantization).
  - *Own scale*: Sigmoid, LeakyRelu, AveragePool and GlobalAveragePool become ``QLinear<Op>``; Add and Mul become
    QLinearAdd/QLinearMul when **both** inputs come from a DQ; Concat becomes QLinearConcat when **every** input
    does (their scales may differ: the kernel requantizes). Each output has its own calibrated range.
  - A fused op's output must feed Qs only and no graph output: the placement quantizes it for every reader.

Softmax (QLinearSoftmax) and Where are left out: a Softmax on a uint8 grid loses the small probabilities a
classifier's confidence lives in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

__all__ = ["FUSIONS", "Fusion", "int8_fusions", "int8_kernels"]


@dataclass(frozen=True)
class Fusion:
    """How onnxruntime runs ``op`` in int8: the kernel (domain, name) it becomes, whether its output shares its data
    input's scale or has its own, and which inputs must come from a DQ (the data input, or every input)."""

    op: str
    kernel: tuple[str, str]
    scale: Literal["shared", "own"]
    inputs: Literal["data", "all"] = "data"


def _shared(op: str) -> Fusion:
    return Fusion(op, ("", op), "shared")


def _fused(op: str, inputs: Literal["data", "all"] = "data") -> Fusion:
    return Fusion(op, ("com.microsoft", f"QLinear{op}"), "own", inputs)


FUSIONS: dict[str, Fusion] = {f.op: f for f in (
    *(_shared(op) for op in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Expand", "Tile",
                             "Gather", "GatherElements", "MaxPool", "Split", "Resize")),
    *(_fused(op) for op in ("Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool")),
    *(_fused(op, "all") for op in ("Add", "Mul", "Concat")),
)}
"""onnxruntime 1.32's CPU QDQ fusions of operators other than Conv, Gemm and MatMul, by ONNX op type."""


@functools.cache
def int8_kernels(provider: str = "CPUExecutionProvider") -> frozenset[tuple[str, str, int]]:
    """(domain, op, first opset) of every kernel ``provider`` registers for uint8 tensors, and every
    ``com.microsoft`` ``QLinear*`` kernel; empty when this onnxruntime does not expose its registry."""
    try:
        from onnxruntime.capi import _pybind_state
        defs = _pybind_state.get_all_opkernel_def()
    except (ImportError, AttributeError):
        return frozenset()
    return frozenset((d.domain or "", d.op_name, d.version_range[0]) for d in defs if d.provider == provider and (
        any("tensor(uint8)" in allowed for allowed in d.type_constraints.values())
        or (d.domain == "com.microsoft" and d.op_name.startswith("QLinear"))))


def int8_fusions(opset: int, provider: str = "CPUExecutionProvider") -> dict[str, Fusion]:
    """The ``FUSIONS`` whose kernel this onnxruntime registers for ``provider`` at ``opset`` (``com.microsoft``
    kernels at any)."""
    kernels = int8_kernels(provider)
    return {op: fusion for op, fusion in FUSIONS.items()
            if any((domain, name) == fusion.kernel and (domain == "com.microsoft" or since <= opset)
                   for domain, name, since in kernels)}
