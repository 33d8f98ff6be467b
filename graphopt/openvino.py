"""OpenVINO's CPU plugin, when the ``openvino`` package is installed: compile a model, time it, word its failures.

``qdq-int8{target=openvino}`` times int8 against float here, ``graphopt validate`` runs the optimised model here
(``validation.environments``), and the benchmarks read OpenVINO's int8 use through the same compile. ``openvino``
is imported by each function that needs it, never when graphopt is imported; ``unavailable`` says why it cannot be.

Latency is measured as ``perf.measure_latency`` measures onnxruntime's, so the two ratios (int8 / float) read
alike: one inference thread, one stream, the LATENCY hint, batch 1, warm-up, then runs interleaved across the
models (``perf.time_interleaved``), median. ``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with bf16 or
fp16 support OpenVINO would otherwise run the float model in bf16/fp16 and the ratio would not be float vs int8.
Compare ratios from one call, never milliseconds across calls.

Precision: with no hint (``EXECUTION_MODE_HINT`` PERFORMANCE, the default), OpenVINO's CPU plugin runs
floating-point layers in bf16 on x86 CPUs with native bf16 (AVX-512 BF16: AMD Zen 4 and later, Intel Cooper Lake and
later), in f16 on Arm CPUs with fp16 arithmetic, and in f32 elsewhere (its ``config.cpp``). A hint the CPU cannot
honour is not an error: on this AVX2 CPU ``INFERENCE_PRECISION_HINT: bf16`` compiles and runs in f32 (OpenVINO
2026.4, measured; AVX-512 CPUs without native bf16 would emulate it). So the precision a model ran in is read back
from the compiled model (``inference_precision``), never inferred from the hint or from the CPU flags; ``F32_CONFIG``
pins f32 where a caller needs float32 arithmetic.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx

from graphopt._proto import save_model_file
from graphopt.errors import first_line
from graphopt.perf import Latency, creation_order, pooled_latencies, time_interleaved

__all__ = ["F32_CONFIG", "LATENCY_CONFIG", "CompiledSession", "compile_cpu", "inference_precision", "measure_latency",
           "openvino_reason", "unavailable", "version"]

LATENCY_CONFIG: Mapping[str, Any] = {
    "INFERENCE_NUM_THREADS": 1,  # ov::inference_num_threads: single thread, as onnxruntime is timed
    "NUM_STREAMS": 1,  # ov::num_streams: one infer request at a time
    "PERFORMANCE_HINT": "LATENCY",  # ov::hint::performance_mode
    "INFERENCE_PRECISION_HINT": "f32",  # ov::hint::inference_precision: no silent bf16/fp16 for the float model
}
"""The CPU plugin's properties for latency runs (string keys: stable across OpenVINO releases since 2023)."""

F32_CONFIG: Mapping[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
"""The CPU plugin's defaults with float32 arithmetic pinned: what OpenVINO runs by default on CPUs without native
bf16/f16 (x86 without AVX-512 BF16), whichever CPU this is."""


def unavailable() -> str | None:
    """Why OpenVINO cannot be used here, or ``None`` when ``import openvino`` works."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"openvino is not installed ({e}): pip install openvino"
    return None


def compile_cpu(model: onnx.ModelProto, config: Mapping[str, Any] | None = None,
                shapes: Mapping[str, Sequence[int]] | None = None) -> Any:
    """``model`` compiled for OpenVINO's CPU plugin with the properties ``config`` (none: its defaults, what a
    user gets; ``LATENCY_CONFIG`` for timing).

    The model is written to a temporary folder first (OpenVINO reads ONNX from files; weights over the protobuf
    limit go to an external data file). ``shapes`` fixes input shapes before compiling: the CPU plugin chooses
    kernels per shape, and a latency deployment runs one fixed shape. Raises whatever OpenVINO raises.
    """
    import openvino

    core = openvino.Core()
    with tempfile.TemporaryDirectory(prefix="graphopt-openvino-") as folder:
        path = Path(folder) / "model.onnx"
        save_model_file(model, path)
        source: Any = str(path)
        if shapes:
            source = core.read_model(source)
            source.reshape({name: openvino.PartialShape(list(shape)) for name, shape in shapes.items()})
        return core.compile_model(source, "CPU", dict(config)) if config else core.compile_model(source, "CPU")


def version() -> str:
    """The installed OpenVINO's release (``2026.4.1``), without its build suffix."""
    import openvino

    return str(openvino.__version__).split("-")[0]


class _Output(NamedTuple):
    name: str


class CompiledSession:
    """``model`` compiled by OpenVINO's CPU plugin with ``config`` (none: its defaults, what a user gets here),
    behind the two calls graphopt's verification makes of an onnxruntime session (``runtime.Session``), so a
    candidate is verified in OpenVINO unchanged. ``precision`` is the floating-point precision it runs in, read back
    from the compiled model. Raises whatever OpenVINO raises."""

    def __init__(self, model: onnx.ModelProto, config: Mapping[str, Any] | None = None) -> None:
        self._compiled = compile_cpu(model, config)
        self._outputs = [_Output(o.name) for o in model.graph.output]
        self.precision = inference_precision(self._compiled)

    def get_outputs(self) -> list[_Output]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str], input_feed: Mapping[str, Any]) -> list[np.ndarray]:
        result = self._compiled(dict(input_feed))  # copied out of the request: the next call reuses its buffers
        return [np.asarray(result[self._compiled.output(name)]) for name in output_names]


def inference_precision(compiled: Any) -> str:
    """The floating-point precision ``compiled`` (an ``openvino.CompiledModel``) runs in, as its CPU plugin reports
    it: ``INFERENCE_PRECISION_HINT`` read back from the compiled model, in OpenVINO's short names (``f32``,
    ``bf16``, ``f16``). This is what the plugin applied, not what was asked: a hint the CPU cannot honour falls back."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = getattr(value, "get_type_name", None)  # openvino.Type; a plain string from other callers
    return str(name() if callable(name) else value)


def measure_latency(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], *, runs: int = 300,
                    warmup: int = 30, budget_s: float | None = None, threads: int = 1) -> list[Latency]:
    """Median and p90 latency of each model on ``feed`` (one sample, batch axis included) in OpenVINO's CPU plugin.

    Each model is compiled with ``LATENCY_CONFIG`` (``threads`` inference threads) for the feed's static shapes (twice, in opposite orders, as
    ``perf.measure_latency`` loads sessions), warmed up, then the models run interleaved as there (``budget_s`` too). Inputs and outputs are shared with
    the request, not copied: the Python binding's copies into fresh arrays would otherwise double its per-call
    time on small models (0.24 vs 0.11 ms for the digits CNN) and hide the model. Raises whatever OpenVINO raises.
    """
    feeds = {name: np.ascontiguousarray(array) for name, array in feed.items()}
    shapes = {name: array.shape for name, array in feeds.items()}
    order = creation_order(models)  # each model compiled twice, in opposite orders, as perf.measure_latency loads
    config = {**LATENCY_CONFIG, "INFERENCE_NUM_THREADS": threads}
    requests = [compile_cpu(models[i], config, shapes).create_infer_request() for i in order]

    def runner(request: Any) -> Any:
        return lambda: request.infer(feeds, share_inputs=True, share_outputs=True)

    times = time_interleaved([runner(request) for request in requests], runs=runs, warmup=warmup, budget_s=budget_s,
                             raw=True)
    return pooled_latencies(order, times, len(models))


def openvino_reason(error: BaseException) -> str:
    """One line from OpenVINO's multi-line error: its summary when it has one, else its first line that is not a
    source location (``Exception from src/…/core.cpp:132:``)."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip(" -")]
    if "Summary:" in lines:
        return "; ".join(lines[lines.index("Summary:") + 1:]) or first_line(error)
    located = re.compile(r"^(Exception from |Check '.*' failed at )\S+:\d+:?$")
    return next((line for line in lines if not located.match(line)), first_line(error))
