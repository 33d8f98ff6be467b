"""onnxruntime's own quantizer, run as its documentation says, as the side-by-side peer of graphopt's int8 passes.

- ``ort static``: ``quantize_static`` (QDQ, per channel, MinMax, uint8 activations, int8 weights) after
  ``quant_pre_process``, calibrated on the very calibration half graphopt fits on; ``ort static reduce_range`` is
  the same with 7-bit weights, onnxruntime's advice for CPUs without VNNI.
- ``ort dynamic``: ``quantize_dynamic`` (int8 weights, default settings; needs no data).

A peer that crashes gives a candidate with the error; the benchmark goes on. ``quant_pre_process`` is tried as
documented, then with ``auto_merge=True``, then with ``skip_symbolic_shape=True``, then skipped; the notes say
which one worked. None of these variants is verified: the peers hand back whatever they make.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from harness import Candidate, error_text
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from workloads import Workload

from graphopt.data import Dataset

__all__ = ["LAYER_OPS", "huge_scales", "int8_layers", "ort_quantizers"]

# Nodes that do a layer's arithmetic, and their integer forms in onnxruntime's operator format.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Attention"})
_INT8_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QAttention",
                       "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})


class _Reader(CalibrationDataReader):
    """Feeds onnxruntime's calibrator the calibration half, in graphopt's batches."""

    def __init__(self, data: Dataset, batch_size: int = 32) -> None:
        self._feeds = (feed for feed, _ in data.batches(batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else {name: np.asarray(value) for name, value in feed.items()}


_PRE_PROCESS: tuple[tuple[str, dict[str, bool] | None], ...] = (
    ("quant_pre_process", {}),
    ("quant_pre_process(auto_merge=True)", {"auto_merge": True}),
    ("quant_pre_process(skip_symbolic_shape=True)", {"skip_symbolic_shape": True}),
    ("no pre-processing", None),
)


def _pre_process(w: Workload, folder: Path) -> tuple[Path, list[str]]:
    """The pre-processed model for ``quantize_static``, trying the documented call first; notes say what happened."""
    notes: list[str] = []
    for label, kwargs in _PRE_PROCESS:
        if kwargs is None:
            break
        target = folder / f"pre-{len(notes)}.onnx"
        try:
            quant_pre_process(str(w.path), str(target), **kwargs)
            return target, [*notes, f"pre-processed with {label}"]
        except Exception as e:  # noqa: BLE001 - onnxruntime's tools raise anything, down to bare asserts
            notes.append(f"{label} failed: {error_text(e)}")
    return w.path, [*notes, "quantized without pre-processing"]


def _static(calibration: Dataset, pre: tuple[Path, list[str]], folder: Path, reduce_range: bool) -> Candidate:
    variant = "ort static" + (" reduce_range" if reduce_range else "")
    target = folder / f"static{'-rr' if reduce_range else ''}.onnx"
    start = time.perf_counter()
    notes, error = list(pre[1]), ""
    for per_channel in (True, False):
        try:
            quantize_static(str(pre[0]), str(target), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            model = onnx.load(str(target))
        except Exception as e:  # noqa: BLE001 - a peer's crash is a row, not the end of the benchmark
            error = error or error_text(e)
            continue
        if not per_channel:
            notes.append(f"per_channel=True crashed ({error}); this row is per_channel=False")
        return Candidate(variant, model, time.perf_counter() - start, verified=False, notes=notes)
    return Candidate(variant, None, time.perf_counter() - start, error, verified=False, notes=notes)


def _dynamic(w: Workload, folder: Path) -> Candidate:
    target = folder / "dynamic.onnx"
    start = time.perf_counter()
    try:
        quantize_dynamic(str(w.path), str(target), weight_type=QuantType.QInt8)
        model = onnx.load(str(target))
    except Exception as e:  # noqa: BLE001 - a peer's crash is a row, not the end of the benchmark
        return Candidate("ort dynamic", None, time.perf_counter() - start, error_text(e), verified=False)
    return Candidate("ort dynamic", model, time.perf_counter() - start, verified=False)


def ort_quantizers(w: Workload, calibration: Dataset) -> list[Candidate]:
    """``ort static``, ``ort static reduce_range`` and ``ort dynamic`` for the workload, each with its layer count
    and a note when MinMax ranges swallowed a huge constant."""
    with tempfile.TemporaryDirectory(prefix=f"bench-peers-{w.name}-") as name, _working_directory(Path(name)):
        folder = Path(name)  # onnxruntime's shape inference leaves temporary files in the current folder
        start = time.perf_counter()
        pre = _pre_process(w, folder)
        spent = time.perf_counter() - start
        found = [_static(calibration, pre, folder, reduce_range) for reduce_range in (False, True)]
        for candidate in found:
            candidate.seconds += spent
        found.append(_dynamic(w, folder))
    for candidate in found:
        if candidate.model is not None:
            n_int8, n_layers = int8_layers(candidate.model.graph)
            candidate.stats.update(int8_layers=n_int8, layers=n_layers)
            candidate.status = "ok" if n_int8 else "ok, but no layer reads int8 weights"
            huge = huge_scales(candidate.model.graph)
            if huge:
                candidate.notes.append(
                    f"{huge} activation scales above 1e10: a MinMax range spanning a huge constant (such as an "
                    "attention mask's float32 minimum) rounds those tensors to a constant")
    return found


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def int8_layers(graph: onnx.GraphProto) -> tuple[int, int]:
    """(layers running on int8 weights, all layers), subgraphs included. A QDQ layer reads its weight (input 1)
    through a DequantizeLinear; an operator-format layer is one of onnxruntime's integer ops."""
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    int8 = total = 0
    for node in graph.node:
        if node.op_type in _INT8_OPS:
            int8, total = int8 + 1, total + 1
        elif node.op_type in LAYER_OPS:
            total += 1
            int8 += len(node.input) > 1 and made_by.get(node.input[1]) == "DequantizeLinear"
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                n_int8, n_total = int8_layers(sub)
                int8, total = int8 + n_int8, total + n_total
    return int8, total


def huge_scales(graph: onnx.GraphProto, limit: float = 1e10) -> int:
    """QuantizeLinear nodes whose constant scale exceeds ``limit``: ranges so wide the tensor rounds to a constant."""
    constants = {t.name: t for t in graph.initializer}
    count = 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 1 and node.input[1] in constants:
            count += bool(np.max(np.abs(numpy_helper.to_array(constants[node.input[1]]))) > limit)
    return count
