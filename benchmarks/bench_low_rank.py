"""Benchmark the low-rank pass: data-aware vs plain SVD at the same rank budget, unverified and verified.

Usage:
    python benchmarks/bench_low_rank.py                           # all-MiniLM-L6-v2 (needs the test extra)
    python benchmarks/bench_low_rank.py --model digits --ratios 0.5,0.3
    python benchmarks/bench_low_rank.py --sentences 256 --runs 300 --json low_rank.json

For each rank budget (``ratio``: the share of each layer's params kept), the pass runs twice on every eligible layer
without verification, once per method, so the two columns differ only in how the factors are fitted; then
``graphopt.optimize`` runs the data-aware pass with verification and narrowing, which keeps only the layers the
budget (cosine ≥ 0.99, top-1 ≥ 0.99) allows. Fidelity is measured on held-out samples never used for fitting;
"removed" is the share of the params of the layers the pass could split (for MiniLM: the encoder's 36 weight
MatMuls). Latency is single-thread, batch 1, the median of interleaved runs after warm-up, as a ratio to the
original measured in the same run. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt.data import Dataset, input_specs, load_data
from graphopt.machine import cpu_model
from graphopt.modelio import load_model
from graphopt.pass_base import PassContext
from graphopt.perf import measure_latency
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import error_stats
from graphopt_passes.low_rank import LowRankPass

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    budget: str
    method: str
    verified: bool
    layers: int
    removed: int
    removed_share: float
    cosine: float
    cosine_min: float
    top1: float | None
    latency_ratio: float | None
    seconds: float


def _matmul_params(model: onnx.ModelProto) -> int:
    """Params of constant weights feeding MatMul/Gemm/Conv: what the pass can split."""
    weights = {t.name: t for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            for name in node.input[:2]:
                if name in weights:
                    total += int(np.prod(weights[name].dims))
    return total


def _fidelity(reference: dict[str, np.ndarray], model: onnx.ModelProto, data: Dataset) -> tuple[float, float, float | None]:
    config = RuntimeConfig()
    outputs = run_dataset(create_session(model, config), data, config)[0]
    name = next(iter(reference))
    stats = error_stats(reference[name], outputs[name])
    return stats.cosine, stats.cosine_min, stats.top1


def _load(which: str, sentences: int, seq_len: int | None) -> tuple[onnx.ModelProto, Dataset, str]:
    if which == "digits":
        model = load_model(ROOT / "examples" / "digits_cnn.onnx")
        return model, load_data(ROOT / "examples" / "digits.npz", input_specs(model)), "digits_cnn"
    from graphopt_zoo import export_minilm, minilm_dataset

    path = export_minilm()
    model = load_model(path)
    folder = Path(tempfile.mkdtemp(prefix="bench-low-rank-"))
    data = load_data(minilm_dataset(folder, sentences, seq_len, seed=0), input_specs(model))
    return model, data, "all-MiniLM-L6-v2"


Candidate = tuple[str, bool, onnx.ModelProto, int, int, float]


def _unverified(original: onnx.ModelProto, calibration: Dataset, ratio: float, method: str) -> Candidate:
    start = time.perf_counter()
    pass_ = LowRankPass(LowRankPass.Options(ratio=ratio, method=method))
    result = pass_.run(original, PassContext(calibration=calibration, runtime=RuntimeConfig()))
    print(f"ratio {ratio:g} {method}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return (method, False, result.model, int(result.stats["layers_split"]), int(result.stats["params_removed"]),
            time.perf_counter() - start)


def _verified(original: onnx.ModelProto, data: Dataset, pipeline: str, splittable: int) -> Candidate:
    start = time.perf_counter()
    verified = graphopt.optimize(original, data, passes=pipeline, normalize=False)
    outcome = verified.pipeline.outcomes[-1]
    accepted = outcome.model_after is not outcome.model_before
    layers = int(outcome.result.stats["layers_split"]) if accepted and outcome.result else 0
    removed = splittable - _matmul_params(verified.model)
    print(f"{pipeline} verified: {time.perf_counter() - start:.0f} s, {outcome.trials} trials", file=sys.stderr,
          flush=True)
    return "data-aware", True, verified.model, layers, removed, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm | digits")
    parser.add_argument("--ratios", default="0.9,0.8,0.6", help="rank budgets: share of each layer's params kept")
    parser.add_argument("--levels", default="0.9;0.8;0.7;0.6;0.5",
                        help="also narrow with per-layer levels (the pass's levels option); empty to skip")
    parser.add_argument("--sentences", type=int, default=256, help="MiniLM samples (half calibrate, half verify)")
    parser.add_argument("--seq-len", type=int, default=None, help="pad MiniLM samples to this length")
    parser.add_argument("--runs", type=int, default=200, help="latency runs per model")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    original, data, title = _load(args.model, args.sentences, args.seq_len)
    calibration, verification = data.split(0.5)
    config = RuntimeConfig()
    reference = run_dataset(create_session(original, config), verification, config)[0]
    splittable = _matmul_params(original)
    feed = next(verification.batches(1, per_sample=True))[0]

    groups: list[tuple[str, list[Candidate]]] = []
    for ratio in (float(r) for r in args.ratios.split(",") if r):
        candidates = [_unverified(original, calibration, ratio, method) for method in ("data-aware", "svd")]
        candidates.append(_verified(original, data, f"low-rank{{ratio={ratio}}}", splittable))
        groups.append((f"ratio {ratio:g}", candidates))
    if args.levels:
        groups.append((f"levels {args.levels}",
                       [_verified(original, data, f"low-rank{{levels={args.levels}}}", splittable)]))

    rows: list[Row] = []
    for budget, candidates in groups:
        latencies = measure_latency([original, *[c[2] for c in candidates]], feed, runs=args.runs)
        base = latencies[0].median_ms
        for (method, is_verified, model, layers, removed, seconds), latency in zip(candidates, latencies[1:]):
            cosine, cosine_min, top1 = _fidelity(reference, model, verification)
            rows.append(Row(budget, method, is_verified, layers, removed, removed / splittable, cosine, cosine_min,
                            top1, latency.median_ms / base, seconds))

    print(f"machine: {cpu_model()}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    print(f"model: {title}; splittable params {splittable:,}; calibration {calibration.n_samples} samples, "
          f"verification {verification.n_samples} held-out samples\n")
    print("| budget | method | verified | layers | params removed | share | cosine | min cosine | top-1 | latency |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        agreement = "–" if r.top1 is None else f"{r.top1:.4f}"
        print(f"| {r.budget} | {r.method} | {'yes' if r.verified else 'no'} | {r.layers} | {r.removed:,} | "
              f"{r.removed_share:.1%} | {r.cosine:.5f} | {r.cosine_min:.5f} | {agreement} | "
              f"{r.latency_ratio:.3f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
