"""Benchmark graphopt pipelines on real models: params, file size, latency ratio and fidelity, in one run.

Usage:
    python benchmarks/bench_passes.py                       # the bundled digits CNN, default pipeline
    python benchmarks/bench_passes.py --passes zero-weight-elimination --runs 2000

Latency is single-thread, batch 1, the median of many interleaved runs after warm-up, reported as a ratio to the
original measured in the same run. Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

import graphopt
from graphopt.data import input_specs, load_data
from graphopt.modelio import load_model
from graphopt.perf import measure_latency
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import error_stats

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "examples" / "digits_cnn.onnx"))
    parser.add_argument("--data", default=str(ROOT / "examples" / "digits.npz"))
    parser.add_argument("--labels", default=str(ROOT / "examples" / "digits_labels.npy"))
    parser.add_argument("--passes", default=None)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()

    original = load_model(args.model)
    data = load_data(args.data, input_specs(original))
    result = graphopt.optimize(original, data, passes=args.passes)
    optimized = result.model

    config = RuntimeConfig(intra_op_threads=1)
    outputs = [run_dataset(create_session(m, config), data, config)[0] for m in (original, optimized)]
    name = next(iter(outputs[0]))
    stats = error_stats(outputs[0][name], outputs[1][name])
    labels = np.load(args.labels) if args.labels and Path(args.labels).exists() else None
    feed = {k: v[:1] if k not in data.stacked else v[0] for k, v in data.arrays.items()}
    before, after = measure_latency([original, optimized], feed, runs=args.runs)

    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime {ort.__version__}")
    print(f"model: {args.model}  passes: {[p.name for p in result.report.passes]}")
    print(f"params      {graphopt.inspect(original).params} → {graphopt.inspect(optimized).params}")
    print(f"file size   {original.ByteSize()} → {optimized.ByteSize()} bytes "
          f"(ratio {optimized.ByteSize() / original.ByteSize():.3f})")
    print(f"latency     {before.median_ms:.4f} ms → {after.median_ms:.4f} ms median "
          f"(ratio {after.median_ms / before.median_ms:.3f}; p90 {before.p90_ms:.4f} → {after.p90_ms:.4f})")
    print(f"fidelity    cosine {stats.cosine:.6f}, max|Δ| {stats.max_abs:.3g}, top-1 agreement {stats.top1}")
    if labels is not None:
        accuracy = [float(np.mean(np.argmax(o[name], axis=-1) == labels)) for o in outputs]
        print(f"accuracy    {accuracy[0]:.4f} → {accuracy[1]:.4f} (held-out labels)")


if __name__ == "__main__":
    main()
