"""How far apart identical models measure: the timing method itself, checked on real models.

Usage:
    python benchmarks/bench_timing.py                         # silero16k and cnn32, 2000 rounds
    python benchmarks/bench_timing.py --models digits --runs 3000

For each model, four copies of the same model are timed in one interleaved run twice (single thread, batch 1):

- *one session each, made in a row*: one onnxruntime session per copy, made one after another, timed by
  ``perf.time_interleaved`` (a new random order every round);
- *graphopt's timing*: ``perf.measure_latency`` on the four copies: two sessions per copy, made in list order and
  then in reverse, their runs pooled.

The copies compute the same thing in the same way, so any spread between their medians is the method's error; the
table gives each copy's median and the spread (slowest over fastest). Not part of CI: timings belong here.
"""

from __future__ import annotations

import argparse

from workloads import feed, load_workloads, machine_line

from graphopt.perf import measure_latency, time_interleaved
from graphopt.runtime import RuntimeConfig, create_session

COPIES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="silero16k,cnn32")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {machine_line()}")
    print("| model | method | medians of four identical copies (ms) | spread |")
    print("|---|---|---|---:|")
    config = RuntimeConfig(intra_op_threads=1, graph_optimization="all")
    for w in load_workloads(args.models):
        sample = feed(w.data)
        sessions = [create_session(w.model, config) for _ in range(COPIES)]
        names = [o.name for o in sessions[0].get_outputs()]
        calls = [(lambda s=s, names=names, sample=sample: s.run(names, sample)) for s in sessions]
        made_in_a_row = [t.median_ms for t in time_interleaved(calls, runs=args.runs, warmup=50)]
        del sessions, calls
        balanced = [t.median_ms for t in measure_latency([w.model] * COPIES, sample, runs=args.runs, warmup=50)]
        for method, medians in (("one session each, made in a row", made_in_a_row),
                                ("graphopt's timing (two sessions each, opposite orders)", balanced)):
            spread = max(medians) / min(medians) - 1
            print(f"| {w.name} | {method} | {', '.join(f'{m:.4f}' for m in medians)} | {spread:.1%} |")


if __name__ == "__main__":
    main()
