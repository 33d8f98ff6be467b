"""How long graphopt's verified search takes, with this checkout's code and with an earlier commit's, in one run.

For each workload and pipeline, ``graphopt.optimize`` runs in a fresh process with this checkout's code and with the
code of ``--baseline`` (default: the last commit before the fast-search work, checked out by git into a temporary
worktree), one right after the other, on the same samples as ``bench_fresh.py`` (graphopt gets 70% of them, 4/7 of
those to calibrate on). Per run: wall seconds of ``optimize``, the pass's trials (pass runs during narrowing,
screened ones included), end-to-end verifications (full runs on every verification sample against the original),
units kept, status, the fidelity the result was accepted on (the lowest lower bound of cosine, top-1 or mask
IoU, on the output furthest from the original), and the result judged on the fresh 30% of the samples graphopt never
saw (``bench_fresh.fidelity``: the head's metric, and whether the budget's means hold there).

    python benchmarks/bench_search.py --models ppocr_det,ddddocr --passes "qdq-int8;weight-clustering"

The ratio is the point: both columns share the machine and the hour. Not part of CI (minutes per model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import write
from workloads import ROOT, machine

BASELINE = "65d1b8c"
"""The last commit before issue 19's work (streamed calibration, faster comparisons, screened search)."""

PIPELINES = ("qdq-int8", "weight-clustering", "dead-neuron-removal,neuron-pruning")
MODELS = ("digits", "cnn32", "silero16k", "silero", "magika", "minilm", "ddddocr", "ppocr_rec", "ppocr_det")


def child(model: str, pipeline: str, seed: int) -> dict[str, Any]:
    """One optimize in this process, whichever graphopt ``sys.path`` finds first: what the table shows."""
    from bench_fresh import fidelity, three_way
    from workloads import load_workloads

    import graphopt
    from graphopt.instrument import Instrument
    from graphopt.runtime import RuntimeConfig, create_session, run_dataset

    class Verifications(Instrument):
        def __init__(self) -> None:
            self.count: dict[str, int] = {}

        def after_verify(self, pass_: Any, verification: Any) -> None:
            if verification.against == "original":
                self.count[pass_.name] = self.count.get(pass_.name, 0) + 1

    (w,) = load_workloads(model)
    seen, _, fresh, fraction, _, _ = three_way(w.data, seed)
    counter = Verifications()
    start = time.perf_counter()
    result = graphopt.optimize(w.model, seen, passes=pipeline, calibration_fraction=fraction,
                               output_kinds=w.output_kinds, instruments=[counter])
    seconds = time.perf_counter() - start
    passes = []
    for record in result.report.passes:
        if record.name in ("normalize", "drop-inferred-shapes"):
            continue
        worst = record.worst or {}
        bounds = {k: worst.get(k) for k in ("cosine_low", "top1_low", "iou_low") if worst.get(k) is not None}
        passes.append({"pass": record.name, "status": record.status, "trials": record.trials,
                       "verifications": counter.count.get(record.name, 0),
                       "units": len(record.units), "kept": sum(1 for u in record.units if u.get("applied")),
                       "fidelity": min(bounds.items(), key=lambda kv: kv[1]) if bounds else None,
                       "seconds": record.seconds})
    config = RuntimeConfig()
    reference, per_sample = run_dataset(create_session(w.model, config), fresh, config)
    got, _ = run_dataset(create_session(result.model, config), fresh, config, per_sample=per_sample)
    figures = fidelity(w, reference, got, {})
    judged = {"samples": figures.samples, "head": figures.head, "cosine": figures.cosine, "top1": figures.top1,
              "within": figures.within_budget, "failures": figures.failures}
    return {"seconds": seconds, "passes": passes, "fresh": judged,
            "code": str(Path(graphopt.__file__).resolve().parent.parent)}


@contextmanager
def code_paths(revision: str) -> Iterator[tuple[Path, Path]]:
    """Two folders whose ``graphopt`` and ``graphopt_passes`` are the code at ``revision`` (a temporary git
    worktree) and this checkout's, whatever is installed."""
    with tempfile.TemporaryDirectory(prefix="graphopt-baseline-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), revision],
                       check=True)
        try:
            yield _shim(tree, Path(folder) / "before"), _shim(ROOT, Path(folder) / "after")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def _shim(tree: Path, folder: Path) -> Path:
    folder.mkdir()
    (folder / "graphopt").symlink_to(tree / "graphopt")
    (folder / "graphopt_passes").symlink_to(tree / "passes")
    return folder


def measure(code: Path, model: str, pipeline: str, seed: int) -> dict[str, Any]:
    """``child`` in a fresh process, on the code in ``code``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code), str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__, "--child", model, pipeline, str(seed)], capture_output=True,
                          text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return dict(json.loads(lines[-1]))


def _cell(run: dict[str, Any], field: str) -> str:
    if "error" in run:
        return "error"
    if field == "fresh":  # of the whole run's result; not in runs of this script from before it judged fresh samples
        fresh = run.get("fresh")
        if not fresh:
            return "–"
        value = fresh["head"] if fresh["head"] is not None else fresh["cosine"]
        return f"{value:.4f}{'' if fresh['within'] else ' ✗'}"
    values = [p[field] for p in run["passes"]]
    if field == "fidelity":
        return "; ".join(f"{v[0].removesuffix('_low')} ≥{v[1]:.4f}" if v else "–" for v in values)
    if field == "kept":
        return "; ".join(f"{p['kept']}/{p['units']}" if p["units"] else "–" for p in run["passes"])
    return "; ".join(str(v) for v in values)


def render(rows: list[dict[str, Any]], info: dict[str, Any], command: str, wall: float, baseline: str,
           reused: str = "") -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    lines = [f"# Verified search: wall time before and after ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
              f"graphopt {info['graphopt']}, Python {info['python']}"),
             f"- command: `{command}`; wall time {wall:.0f} s",
             f"- before: the code at {baseline}; after: this checkout. Each cell: before → after.",
             ("- fresh samples: the result on the 30% of the samples graphopt never saw: the head's metric "
              "(per-position top-1 of a CTC head, mask IoU of a map, decision agreement), else the cosine; ✗ where "
              "the budget's means fail there"),
             *([(f"- before, where {reused} has it: that file's run of the same commit, seed and pipeline (not "
                 "this run's hour)")] if reused else []), "",
             ("| model | pipeline | seconds | after / before | trials | end-to-end verifications | units kept | "
              "fidelity (lowest bound) | fresh samples | status |"),
             "|---|---|---:|---:|---|---|---|---|---|---|"]
    for row in rows:
        before, after = row["before"], row["after"]
        ratio = (f"{after['seconds'] / before['seconds']:.2f}" if "error" not in before and "error" not in after
                 else "–")
        seconds = " → ".join(f"{r['seconds']:.0f}" if "error" not in r else "error" for r in (before, after))
        cells = [" → ".join(_cell(r, f) for r in (before, after))
                 for f in ("trials", "verifications", "kept", "fidelity", "fresh", "status")]
        lines.append(f"| {row['model']} | `{row['pipeline']}` | {seconds} | {ratio} | " + " | ".join(cells) + " |")
    errors = [f"- {row['model']} × {row['pipeline']} ({side}): {row[side]['error']}" for row in rows
              for side in ("before", "after") if "error" in row[side]]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated workloads of workloads.py")
    parser.add_argument("--passes", default=";".join(PIPELINES), help="semicolon-separated pipelines")
    parser.add_argument("--baseline", default=BASELINE, help="the commit whose code is 'before'")
    parser.add_argument("--seed", type=int, default=0, help="the samples' split, as bench_fresh.py's")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--before-from", type=Path, default=None,
                        help="take 'before' from this earlier JSON result where it has the model and pipeline (same "
                             "baseline and seed), to time only the code that changed")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    earlier = _earlier(args.before_from, args.baseline, args.seed) if args.before_from else {}
    with code_paths(args.baseline) as (before, after):
        for model in args.models.split(","):
            for pipeline in args.passes.split(";"):
                row = {"model": model, "pipeline": pipeline,
                       "before": earlier.get((model, pipeline)) or measure(before, model, pipeline, args.seed),
                       "after": measure(after, model, pipeline, args.seed)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    info = machine()
    command = "python benchmarks/bench_search.py " + " ".join(sys.argv[1:])
    reused = args.before_from.name if earlier else ""
    markdown = render(rows, info, command, time.perf_counter() - start, args.baseline, reused)
    print(markdown)
    write(args.out, "search", markdown, {"schema": "graphopt.bench-search/1", "machine": info, "command": command,
                                         "baseline": args.baseline, "seed": args.seed, "before_from": reused,
                                         "rows": rows})


def _earlier(path: Path, baseline: str, seed: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The 'before' runs of an earlier result of this script, by (model, pipeline); refused unless it ran the same
    baseline (and seed, where it says)."""
    result = json.loads(path.read_text())
    earlier_seed = result.get("seed", None if "--seed" in result.get("command", "") else 0)
    if result.get("baseline") != baseline or earlier_seed != seed:
        raise SystemExit(f"{path}: another baseline or seed than --baseline {baseline} --seed {seed}")
    return {(row["model"], row["pipeline"]): row["before"] for row in result["rows"] if "error" not in row["before"]}


if __name__ == "__main__":
    main()
