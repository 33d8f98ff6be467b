"""What each runtime needs from a QDQ placement: the rule set behind qdq-int8's ``target`` option.

``ort-cpu`` (and ``openvino``, which reads the same pattern) follows the onnxruntime CPU fusions listed in
``_qdq_plan``'s docstring: uint8 activations, pairs on layer results as well as inputs so that whole
``DQ → layer → Q`` groups fuse, int32 biases behind a DQ.

``tensorrt`` follows TensorRT's explicit quantization (the TensorRT developer guide, "Working with Quantized Types"
→ "Explicit Quantization", its "Q/DQ Layer-Placement Recommendations" and "ONNX Support"), cross-checked with the
settings NVIDIA's own ONNX quantizer hands to onnxruntime's (TensorRT Model Optimizer,
``modelopt/onnx/quantization/ort_utils.py::configure_ort`` and ``int8.py``):

- Activations are signed int8, symmetric, zero point 0, one scale per tensor: TensorRT's scheme is symmetric
  and it quantizes activations per tensor only. No uint8 anywhere. (The grid is ±127, as for weights: the unused
  -128 costs nothing and keeps ±x alike.)
- Weights are int8, symmetric, one scale per output channel (Conv axis 0, MatMul ``B[K, N]`` axis 1, Gemm axis
  0 with ``transB = 1`` else 1): the guide requires per-channel scales to run along the output-channel axis and
  recommends per-tensor activations with per-channel weights. The ``axis`` attribute needs opset 13, which the pass
  already ensures for per-channel weights. (The 8.x guide allowed per-channel MatMul weights only when both inputs
  are 2-D; batched MatMuls keep per-channel weights here, as for TensorRT 10, and ``per_channel=false`` is the way
  out for an older engine builder.)
- Pairs go on the *inputs* of the quantizable layers and are read by those layers only; layer outputs are not
  quantized: the guide's first two placement recommendations are to quantize every input of a weighted layer and,
  by default, none of its outputs. Where a layer's output is the quantized input of the next layer, TensorRT fuses
  that Q into the producer itself, and it moves Q/DQ through data-movement layers that commute with them (MaxPool,
  Reshape, …: "Q/DQ propagation"), so no pair is put after a Relu or a pool. ModelOpt likewise excludes output
  quantization for every op type.
- Biases stay float: TensorRT folds a float bias into the fused layer, and its ONNX parser rejected the int32 bias
  DQ that onnxruntime's quantizer writes ("only activation types allowed as input to this layer",
  microsoft/onnxruntime#14229, #17738); ModelOpt passes ``QuantizeBias = False``. Bias correction still adjusts the
  float bias.
- Residual Add: TensorRT fuses an element-wise Add that follows a weighted layer (Conv + Add [+ Relu], as in ResNet),
  and the precision of the Add's *other* input decides whether the fused output can be int8, which is why the guide
  recommends quantizing the residual input of skip connections. So where an Add sums the output of a quantized Conv
  that only the Add reads (the main branch) with another activation of the same shape (the skip branch), the skip
  input gets a pair that the Add reads and the Conv output stays float, as ModelOpt's
  ``build_non_residual_input_map`` and the pytorch-quantization ResNet tutorial ("further optimization") do. When
  both inputs are such Conv outputs (a projection shortcut), the first is taken as the main branch.
- Weights are stored as int8 initializers behind a DequantizeLinear, not as float weights behind a Q→DQ pair
  (onnxruntime's ``AddQDQPairToWeight``). The TensorRT 8.x guide wanted Q/DQ weights in FP32 (pre-quantized ones
  too, behind a Q of scale 1), hence optimum's TensorRT recipe set ``qdq_add_pair_to_weight``; the current guide
  (TensorRT 10) accepts INT8 weights as long as a DequantizeLinear sits between them and the layer, which keeps the
  4× smaller file, and ModelOpt writes that layout with ``--dq_only`` (its default still stores float weights behind
  a pair). An engine builder older than TensorRT 10 needs float weights: not produced here.
- One pair per tensor, shared by all its quantized readers, not a dedicated pair per reader (onnxruntime's
  ``DedicatedQDQPair``, which optimum's 2022 TensorRT recipe set): TensorRT clones shared Q/DQ nodes itself while
  fusing (the ``QuantizeLinear_N_clone_k`` layers in its verbose logs, NVIDIA/TensorRT#2597, #2131), and ModelOpt,
  NVIDIA's current recipe, passes ``DedicatedQDQPair = False``.
- ``mode=dynamic`` is refused: TensorRT's ONNX import rejects ConvInteger/MatMulInteger (the guide's "ONNX
  Support"), and its parser has had no DynamicQuantizeLinear importer (reported for TensorRT 8.6).

Left out for now: ConvTranspose layers (TensorRT quantizes them per channel on weight axis 1; graphopt's layer
finder and bias-correction maths know only Conv, Gemm and MatMul), residual Adds after a MatMul/Gemm (the guide
describes the fusion for convolutions) or whose main branch runs through an unfolded BatchNormalization (run
fuse-conv-bn first), and pairs around non-weighted layers that do not commute with Q/DQ
(AveragePool, Concat, …): the guide offers those only as a performance experiment, to be added sparingly since an
unfused pair slows the engine down.

TensorRT does not run here (no GPU), so these rules are checked structurally; the manager still verifies every
result in onnxruntime's CPU provider, which runs int8 QDQ graphs. The speed check times a target in the runtime
that runs it on this CPU (``timed_in``): onnxruntime for ``ort-cpu``, OpenVINO's CPU plugin for ``openvino`` (when
the package is installed: its int8 kernels are not onnxruntime's, and on AVX2 without VNNI it ran MiniLM's int8
layers slower than float where onnxruntime ran them faster); TensorRT it cannot time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["ORT_CPU", "TARGETS", "TENSORRT", "Runtime", "TargetRules", "rules_for"]

Runtime = Literal["onnxruntime", "openvino"]
"""A runtime the speed check can time on this CPU."""


@dataclass(frozen=True)
class TargetRules:
    """How a placement and its rewrite serve one runtime.

    Attributes:
        name: the ``target`` option value.
        signed_activations: int8 symmetric activations (zero point 0) instead of uint8 asymmetric ones.
        quantize_results: also quantize layer results (a Conv's or owned activation's output) and layer inputs made
            by a layer for every reader, sharing scales through data movement, so ``DQ → layer → Q`` fuses; else
            pairs sit on layer inputs only, read by the quantized layers alone.
        int32_bias: biases as int32 behind a DQ at ``s_x·s_w``; else they stay float (corrected when enabled).
        residual_skip: quantize the skip input of a residual Add whose other input is a quantized Conv's output.
        regions: also run the operators between quantized layers in int8 where onnxruntime's CPU provider fuses
            them (``_qdq_kernels``; ``_qdq_plan`` says how a region grows).
        dynamic_mode: ``mode=dynamic`` (DynamicQuantizeLinear + MatMulInteger) is something the runtime imports.
        timed_in: the runtime that runs the target on this CPU, which ``speed_check=auto`` times int8 in and may
            decline it by: ``"onnxruntime"``, ``"openvino"`` (when installed), or ``None`` (not timed).
    """

    name: str
    signed_activations: bool
    quantize_results: bool
    int32_bias: bool
    residual_skip: bool
    dynamic_mode: bool
    regions: bool
    timed_in: Runtime | None


ORT_CPU = TargetRules("ort-cpu", signed_activations=False, quantize_results=True, int32_bias=True,
                      residual_skip=False, dynamic_mode=True, regions=True, timed_in="onnxruntime")
TENSORRT = TargetRules("tensorrt", signed_activations=True, quantize_results=False, int32_bias=False,
                       residual_skip=True, dynamic_mode=False, regions=False, timed_in=None)
TARGETS = {rules.name: rules for rules in (
    ORT_CPU, replace(ORT_CPU, name="openvino", regions=False, timed_in="openvino"), TENSORRT)}


def rules_for(target: str) -> TargetRules:
    """The rules of ``target`` (one of ``TARGETS``)."""
    try:
        return TARGETS[target]
    except KeyError as e:
        raise ValueError(f"unknown QDQ target {target!r}; known: {', '.join(TARGETS)}") from e
