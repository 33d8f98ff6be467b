"""Peak memory of a pass against the number of samples: does it stay flat?

Each (pass, sample count) runs ``graphopt.optimize`` in a fresh Python process on the first N samples of a real
workload (its real inputs repeated in order when N exceeds them: the point is the count, not new content), given as
an ``.npz`` file as a user gives it (written by this script before the process starts), and reports that process's
peak resident set size (``VmHWM``, see ``peak_rss_mb``), the wall time and the pass's status. A pass whose memory
holds per-sample state shows it as growth from column to column.

    python benchmarks/bench_memory.py --model magika --samples 100,1000,10000

Not part of CI: a run of 10,000 samples takes minutes per pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import write
from workloads import ROOT, load_workloads, machine

from graphopt.data import Dataset

PASSES = ("qdq-int8{speed_check=off}", "weight-clustering", "neuron-pruning")


def child(model: str, passes: str, data: str) -> dict[str, Any]:
    """Run one optimize on the samples in ``data`` in this process and return its peak RSS, seconds and the pass's
    status."""
    import graphopt

    (w,) = load_workloads(model)
    start = time.perf_counter()
    result = graphopt.optimize(w.model, data, passes=passes, output_kinds=w.output_kinds)
    seconds = time.perf_counter() - start
    status = next(o.status.value for o in result.pipeline.outcomes if o.pass_name == passes.split("{")[0])
    return {"peak_rss_mb": peak_rss_mb(), "seconds": seconds, "status": status}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB since its program started: ``VmHWM``, which exec resets. Linux
    carries ``ru_maxrss`` over from the forked parent, so a parent holding 30,000 samples' arrays made every child
    read 385 MB, 100 samples' too."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_samples(data: Dataset, samples: int, path: Path) -> Path:
    """The first ``samples`` samples of ``data`` (repeated in order when it has fewer) as an uncompressed ``.npz``."""
    index = np.arange(samples) % data.n_samples
    np.savez(path, **data.subset(index).to_arrays())  # type: ignore[arg-type]
    return path


def measure(model: str, passes: str, data: Path) -> dict[str, Any]:
    """``child`` in a fresh process, so that no earlier run's memory counts."""
    done = subprocess.run([sys.executable, __file__, "--child", model, passes, str(data)], capture_output=True,
                          text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return dict(json.loads(lines[-1]))


def render(model: str, counts: list[int], rows: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any],
           command: str, wall: float) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    lines = [f"# Peak memory against the sample count ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
             f"graphopt {info['graphopt']}, Python {info['python']}"),
             f"- command: `{command}`; wall time {wall:.0f} s", "",
             (f"Workload `{model}`; each cell is one fresh process: peak RSS in MB (seconds, the pass's status). "
             "Flat means the last column is within 10% of the first."), "",
             "| pass | " + " | ".join(f"{n:,} samples" for n in counts) + " | last / first |",
             "|---|" + "---:|" * (len(counts) + 1)]
    for passes, cells in rows.items():
        texts = [f"{c['peak_rss_mb']:.0f} ({c['seconds']:.0f} s, {c['status']})" if "error" not in c
                 else f"error: {c['error']}" for c in (cells[n] for n in counts)]
        first, last = cells[counts[0]], cells[counts[-1]]
        ratio = (f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}" if "error" not in first and "error" not in last
                 else "–")
        lines.append(f"| {passes} | " + " | ".join(texts) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="magika", help="a workload of benchmarks/workloads.py")
    parser.add_argument("--samples", default="100,1000,10000", help="comma-separated sample counts")
    parser.add_argument("--passes", default=";".join(PASSES), help="semicolon-separated pipelines")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    counts = [int(n) for n in args.samples.split(",")]
    start = time.perf_counter()
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    (w,) = load_workloads(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        files = {n: write_samples(w.data, n, Path(folder) / f"{n}.npz") for n in counts}
        for passes in args.passes.split(";"):
            rows[passes] = {}
            for n in counts:
                rows[passes][n] = measure(args.model, passes, files[n])
                print(f"{passes} × {n}: {rows[passes][n]}", flush=True)
    info = machine()
    command = "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:])
    markdown = render(args.model, counts, rows, info, command, time.perf_counter() - start)
    print(markdown)
    write(args.out, "memory", markdown, {"schema": "graphopt.bench-memory/1", "machine": info, "command": command,
                                         "model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
