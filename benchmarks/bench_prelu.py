"""Why ``fast-prelu`` exists: onnxruntime's PRelu against the rewrite graphopt makes of it, on activation shapes of
MTCNN's O-Net, in one run.

Usage:
    python benchmarks/bench_prelu.py                 # prints the table and the CPU flags
    python benchmarks/bench_prelu.py --runs 2000

Each row times three one-op graphs on the same seeded input, interleaved (``graphopt.perf.measure_latency``: single
thread, batch 1, median after warm-up): ``PRelu(x, slope)``, the model ``fast-prelu`` writes from it
(``Relu(x) + slope·Min(x, 0)``), and, for scale, one ``Mul`` by the slope. Shapes: O-Net's first PReLU input in the
NCHW layout its float model runs, and the same in NHWC, the layout onnxruntime's int8 kernels leave it in. The
rewrite's outputs are checked bit for bit against PRelu's. Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from workloads import machine_line

from graphopt.pass_base import PassContext
from graphopt.perf import measure_latency
from graphopt_passes.fast_prelu import FastPReluPass

SHAPES = {"NCHW [1, 32, 46, 46]": ([1, 32, 46, 46], [32, 1, 1]), "NHWC [1, 46, 46, 32]": ([1, 46, 46, 32], [32]),
          "NCHW [1, 64, 21, 21]": ([1, 64, 21, 21], [64, 1, 1])}


def _one_op(op: str, shape: list[int], slope: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x", "slope"], ["y"])], op,
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(slope, "slope")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {machine_line()}")
    print("| activation | PRelu µs | fast-prelu µs | ratio | one Mul µs | same bits |")
    print("|---|---:|---:|---:|---:|---|")
    for label, (shape, slope_shape) in SHAPES.items():
        slope = rng.uniform(-0.5, 0.7, slope_shape).astype(np.float32)
        prelu = _one_op("PRelu", shape, slope)
        rewritten = FastPReluPass()(prelu, PassContext(cpu_flags=frozenset())).model
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        outputs = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                   .run(None, feed)[0] for m in (prelu, rewritten)]
        same = np.array_equal(outputs[0].view(np.uint32), outputs[1].view(np.uint32))
        timed = measure_latency([prelu, rewritten, _one_op("Mul", shape, slope)], feed, runs=args.runs)
        us = [t.median_ms * 1e3 for t in timed]
        print(f"| {label} | {us[0]:.1f} | {us[1]:.1f} | {us[1] / us[0]:.3f}× | {us[2]:.1f} | "
              f"{'yes' if same else '**no**'} |")


if __name__ == "__main__":
    main()
