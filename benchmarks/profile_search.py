"""Where a pass's verified search spends its time: cProfile around one ``graphopt.optimize`` on a real workload.

    python benchmarks/profile_search.py --model ddddocr --samples 200 --passes "qdq-int8{speed_check=off}"

Prints the pass's status, its trials and seconds, the CPU flags, and the functions with the most cumulative time.
Profiling slows Python code (not onnxruntime's kernels): compare runs of this script with each other, not with
``bench_fresh.py``'s wall times. Not part of CI.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import numpy as np
from workloads import load_workloads, machine

import graphopt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddddocr", help="a workload of benchmarks/workloads.py")
    parser.add_argument("--samples", type=int, default=200, help="the first N samples of the workload")
    parser.add_argument("--passes", default="qdq-int8{speed_check=off}")
    parser.add_argument("--top", type=int, default=30, help="functions to list")
    args = parser.parse_args()
    (w,) = load_workloads(args.model)
    data = w.data.subset(np.arange(min(args.samples, w.data.n_samples)))
    profile = cProfile.Profile()
    profile.enable()
    result = graphopt.optimize(w.model, data, passes=args.passes, output_kinds=w.output_kinds)
    profile.disable()
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores; " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                               for k, v in info["flags"].items()))
    for outcome in result.pipeline.outcomes:
        print(f"{outcome.pass_name}: {outcome.status.value}, {outcome.trials} trials, {outcome.seconds:.1f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
