"""OpenVINO for the benchmarks: which layers of a model compiled for OpenVINO's CPU plugin run in int8.

graphopt's ``qdq-int8{target=openvino}`` writes QDQ pairs for OpenVINO, which reads them as FakeQuantize and runs
the layers between them in int8 where the CPU allows. Whether it did is not visible from the outputs, so
``openvino_int8_layers`` reads the compiled runtime graph: each executed layer records its ``runtimePrecision``
(and ``openvino_matrix_kernels`` its kernel). int8 layers are not always faster: on an AVX2 CPU without VNNI,
OpenVINO 2026.4 ran all 36 of MiniLM's QDQ FullyConnected layers in u8×i8 on ``jit_gemm_I8``, slower than its f32
kernels (int8 1.08× the float latency, where onnxruntime gave 0.56×), while the digits CNN's int8 convolution ran
on ``jit_avx2_I8``.

Compiling, timing and outputs are graphopt's own (``graphopt.openvino``, which ``qdq-int8{target=openvino}`` times
with, and ``graphopt.validation.environments.openvino_outputs``): latency is measured as ``graphopt.perf.measure_latency`` measures onnxruntime's, so the two ratios (int8 / float)
read alike: one inference thread, one stream, the LATENCY hint, ``INFERENCE_PRECISION_HINT`` f32, batch 1, warm-up,
then runs interleaved across the models, median. Compare ratios from one call, never milliseconds across calls.

Benchmarks run as scripts from this folder and import it as ``from openvino_runtime import ...``.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from graphopt.openvino import LATENCY_CONFIG, compile_cpu

__all__ = ["INT8_PRECISIONS", "MATRIX_LAYERS", "openvino_int8_layers", "openvino_layer_precisions",
           "openvino_matrix_kernels"]

MATRIX_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
"""Runtime-graph layer types that do the arithmetic int8 is for (Reorder, Pooling… in u8 only move bytes)."""

INT8_PRECISIONS = frozenset({"i8", "u8"})


def _compiled(model: Any, shapes: Mapping[str, Sequence[int]] | None) -> Any:
    return compile_cpu(model, LATENCY_CONFIG, shapes) if isinstance(model, onnx.ModelProto) else model


def openvino_layer_precisions(compiled: Any, shapes: Mapping[str, Sequence[int]] | None = None
                              ) -> collections.Counter[tuple[str, str]]:
    """``(layer type, runtime precision)`` counts of the layers a compiled model executes (``Const``, ``Input``
    and ``Output`` left out). ``compiled`` is an ``openvino.CompiledModel`` or an ``onnx.ModelProto`` to compile
    with ``LATENCY_CONFIG`` (and ``shapes``); the precision is the one the CPU plugin chose per layer, read from
    the runtime graph."""
    compiled = _compiled(compiled, shapes)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in {"Const", "Input", "Output"}:
            counts[kind, info["runtimePrecision"].astype(str)] += 1
    return counts


def openvino_int8_layers(compiled: Any, shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[int, int]:
    """``(int8, total)``: how many matrix layers (``MATRIX_LAYERS``) of ``compiled`` run in i8/u8, of how many.

    Arguments as for ``openvino_layer_precisions``. A QDQ model whose count is 0 ran in float: OpenVINO found no
    int8 kernel for its layers on this CPU and kept the quantization as float arithmetic.
    """
    counts = openvino_layer_precisions(compiled, shapes)
    matrix = {key: n for key, n in counts.items() if key[0] in MATRIX_LAYERS}
    return sum(n for (_, precision), n in matrix.items() if precision in INT8_PRECISIONS), sum(matrix.values())


def openvino_matrix_kernels(compiled: Any, shapes: Mapping[str, Sequence[int]] | None = None
                            ) -> collections.Counter[str]:
    """How many matrix layers of ``compiled`` run on each CPU kernel (``primitiveType``; arguments as for
    ``openvino_layer_precisions``): int8 layers can still be slow ones, such as ``jit_gemm_I8``, oneDNN's generic
    int8 GEMM that the CPU plugin uses for FullyConnected on AVX2 without VNNI, slower here than the f32
    ``gemm_mlas_f32``/``brgemm_avx2_f32`` it picks for the float model. Dynamic shapes leave kernels ``undef_*``
    until a run: give ``shapes`` to see them."""
    compiled = _compiled(compiled, shapes)
    return collections.Counter(
        op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) in MATRIX_LAYERS)
