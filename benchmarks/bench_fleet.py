"""``graphopt fleet`` on the benchmark workloads: wall time with 1 worker, N workers, and N through ``--ray local``.

The chosen workloads (``workloads.py``: real models, real samples) are written as one fleet into a temporary folder:
each model as an ``.onnx`` file (its weights in one external-data file when the original keeps them outside), its
samples as an ``.npz``, and a ``manifest.toml`` with one ``[[model]]`` table each (the same job for every model:
``--passes``, default ``qdq-int8``, or ``--goal`` with ``--time-budget``; ``output_kind`` from the workload). The
same fleet then runs three times, each as one ``python -m graphopt fleet`` process (a fresh process: imports, Ray's
start and the driver's timing of the outputs count as the user waits for them) into a fresh output folder, so that
nothing is "up to date":

- processes, 1 worker (each task gets all the cores as onnxruntime threads);
- processes, ``--workers N`` (default 2: the cores shared out, one thread each on a 2-core machine);
- ``--ray local --workers N`` (not run when Ray is not installed).

Per configuration: the wall time of the process, the speed-up against 1 worker, the fleet's own ``wall_seconds``
(tasks, then the driver's timing of each output against its original, one model at a time), the longest task and the
sum of the tasks (with N workers the wall time cannot beat max(longest task, sum / N)), the counts by status and the
driver's peak RSS (``VmHWM`` of the ``graphopt`` process; Ray's and the pool's worker processes are not counted).
Per model: its task seconds and status under each configuration. The runs must agree: same status and same pipeline
per model (a difference is printed, not hidden: a pass's speed check timed with other threads may decide otherwise).

    python benchmarks/bench_fleet.py                                  # every workload whose packages are installed
    python benchmarks/bench_fleet.py --models digits,cnn32 --out /tmp/bench-fleet
    python benchmarks/bench_fleet.py --goal latency --time-budget 120  # the long job

Results go to ``fleet-<date>.md/.json``, or ``fleet-goal-<goal>-<date>`` for a ``--goal`` job. Not part of CI: with
the default ``qdq-int8`` job on all eleven workloads one run takes about 15–20 minutes on a 2-core machine (the three
fleets, plus building the workloads' samples on first use), the long job 30.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from harness import write
from workloads import LOADERS, ROOT, Workload, load_workloads, machine

from graphopt.modelio import model_files

ONE, MANY, RAY = "one", "many", "ray"
EXTERNAL_BYTES = 1 << 30
"""A model larger than this is written with its weights in an external-data file even when the original was not
(protobuf cannot serialise 2 GB)."""


CHILD = """\
import json, sys
from pathlib import Path
from graphopt.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")]
print(json.dumps({"driver_peak_rss_mb": hwm[0] if hwm else None}), flush=True)
sys.exit(code)
"""
"""The ``graphopt`` process of one configuration: ``graphopt.cli.main`` as ``python -m graphopt`` runs it (and nothing
of the benchmarks imported), then its peak RSS (``VmHWM``) as one JSON line on stdout."""


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def write_workload(w: Workload, folder: Path) -> tuple[Path, Path]:
    """``w``'s model and samples in ``folder`` as a user hands them to ``graphopt fleet``: ``<name>.onnx`` (weights
    in ``<name>.onnx.data`` when the original keeps external data, or when it is too large for one file) and
    ``<name>.npz``."""
    model_path, data_path = folder / f"{w.name}.onnx", folder / f"{w.name}.npz"
    external = len(model_files(w.path)) > 1 or w.model.ByteSize() > EXTERNAL_BYTES
    model = onnx.ModelProto()
    model.CopyFrom(w.model)  # onnx.save with external data moves the weights out of the proto it is given
    onnx.save(model, model_path, save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{w.name}.onnx.data", size_threshold=1024)
    np.savez(data_path, **w.data.to_arrays())  # type: ignore[arg-type]
    return model_path, data_path


def manifest_table(w: Workload, model: Path, data: Path, job: Mapping[str, Any]) -> str:
    """One ``[[model]]`` table: paths relative to the manifest, the job, and the workload's output kinds (already in
    the ``--output-kind`` string form, e.g. ``classes:-1``, ``mask:0.3``)."""
    lines = ["[[model]]", f"name = {toml_string(w.name)}", f"model = {toml_string(model.name)}",
             f"data = {toml_string(data.name)}"]
    lines += [f"{key} = {toml_string(value) if isinstance(value, str) else value}" for key, value in job.items()]
    if w.output_kinds:
        kinds = ", ".join(f"{toml_string(k)} = {toml_string(v)}" for k, v in w.output_kinds.items())
        lines.append(f"output_kind = {{ {kinds} }}")
    return "\n".join(lines) + "\n"


def run_config(manifest: Path, out: Path, report: Path, workers: int, ray: bool) -> dict[str, Any]:
    """One ``graphopt fleet`` process on ``manifest`` into the fresh folder ``out``: its wall time, exit code,
    driver peak RSS and the fleet's JSON report."""
    argv = ["-q", "fleet", str(manifest), "-o", str(out), "--workers", str(workers), "--report", str(report)]
    argv += ["--ray", "local"] if ray else []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    found: dict[str, Any] = {"command": "graphopt " + " ".join(argv), "wall_seconds": wall, "exit_code":
                             done.returncode, "load_average_before": load}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        found.update(json.loads(lines[-1]))
    if done.returncode not in (0, 8) or not report.is_file():  # 8: some models failed, the others are in the report
        found["error"] = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}, no report"])[-1][:300]
        return found
    found["report"] = json.loads(report.read_text(encoding="utf-8"))
    return found


def agreement(runs: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], names: Sequence[str]) -> list[str]:
    """Each model whose status or pipeline differs between the configurations that ran, with what each gave."""
    rows = {labels[key]: {r["name"]: r for r in run["report"]["models"]} for key, run in runs.items()
            if "report" in run}
    found = []
    for name in names:
        for key in ("status", "pipeline"):
            values = {label: by_name.get(name, {}).get(key) for label, by_name in rows.items()}
            if len(set(values.values())) > 1:
                found.append(f"{name}: {key} differs: " + "; ".join(f"{k}: {v!r}" for k, v in values.items()))
    return found


def _cell(seconds: float | None, digits: int = 1) -> str:
    return "–" if seconds is None else f"{seconds:.{digits}f}"


def render(runs: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], names: Sequence[str],
           job: Mapping[str, Any], skipped: Mapping[str, str], disagree: Sequence[str], info: Mapping[str, Any],
           command: str, wall: float) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    job_text = ", ".join(f"{k} = {toml_string(v) if isinstance(v, str) else v}" for k, v in job.items())
    lines = [f"# graphopt fleet: {'; '.join(labels.values())} ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
              f"graphopt {info['graphopt']}, Python {info['python']}"),
             f"- command: `{command}`; wall time {wall:.0f} s",
             f"- fleet: {len(names)} models ({', '.join(names)}), each with `{job_text}`"]
    lines += [f"- skipped {name}: {reason}" for name, reason in skipped.items()]
    lines += ["",
              ("Each configuration is one `graphopt fleet` process (`python -m graphopt`, started fresh) into a fresh "
               "output folder. *wall*: the process, as the user waits for it (imports, Ray's start, the tasks, the "
               "driver timing each output against its original); *fleet*: the report's `wall_seconds` (tasks and "
               "that timing); *bound*: max(longest task, sum of tasks / workers), which no schedule beats; *load*: "
               "the 1-minute load average just before (other work on the machine)."), "",
              ("| configuration | threads per task | wall s | speed-up vs 1 worker | fleet s | longest task s "
               "| sum of tasks s | bound s | optimized / up to date / failed | driver peak RSS MB | load |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    base = runs.get(ONE, {}).get("wall_seconds") if "report" in runs.get(ONE, {}) else None
    for key, run in runs.items():
        label = labels[key]
        if "report" not in run:
            lines.append(f"| {label}: {run.get('error') or run.get('not_run')} | " + " | ".join(["–"] * 10) + " |")
            continue
        report = run["report"]
        seconds = [m["seconds"] for m in report["models"]]
        bound = max(max(seconds, default=0.0), sum(seconds) / report["workers"])
        counts = report["counts"]
        speed_up = f"{base / run['wall_seconds']:.2f}×" if base else "–"
        lines.append(f"| {label} | {report['threads_per_task']} | {run['wall_seconds']:.1f} | {speed_up} "
                     f"| {report['wall_seconds']:.1f} | {max(seconds, default=0.0):.1f} | {sum(seconds):.1f} "
                     f"| {bound:.1f} | {counts['optimized']} / {counts['up to date']} / {counts['failed']} "
                     f"| {_cell(run.get('driver_peak_rss_mb'), 0)} | {run['load_average_before']:.1f} |")
    lines += ["", "Per model: task seconds (status) under each configuration, and the pipeline the first run kept.", "",
              "| model | " + " | ".join(labels[k] for k in runs) + " | pipeline |",
              "|---|" + "---:|" * len(runs) + "---|"]
    by_config = {k: {m["name"]: m for m in run["report"]["models"]} if "report" in run else {}
                 for k, run in runs.items()}
    for name in names:
        cells, pipeline = [], ""
        for key in runs:
            row = by_config[key].get(name)
            if row is None:
                cells.append("–")
                continue
            reason = f": {row['reason'][:80]}" if row["status"] == "failed" and row.get("reason") else ""
            cells.append(f"{row['seconds']:.1f} ({row['status']}{reason})")
            pipeline = pipeline or row.get("pipeline") or ""
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | `{pipeline}` |" if pipeline else " | – |"))
    ran = [labels[k] for k, run in runs.items() if "report" in run]
    if len(ran) < 2:
        lines += ["", "Agreement: fewer than two configurations ran; nothing to compare."]
    elif not disagree:
        lines += ["", f"Agreement ({'; '.join(ran)}): same status and same pipeline for every model."]
    else:
        lines += ["", f"**Disagreement** between the runs ({'; '.join(ran)}):", *[f"- {d}" for d in disagree]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(LOADERS), help=f"comma-separated, of {', '.join(LOADERS)}")
    job = parser.add_mutually_exclusive_group()
    job.add_argument("--passes", default=None, help="every model's pipeline (default: qdq-int8)")
    job.add_argument("--goal", default=None, help="every model's goal instead of passes (e.g. latency)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per model, with --goal")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel configurations (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for .md and .json")
    args = parser.parse_args()
    if args.time_budget is not None and args.goal is None:
        parser.error("--time-budget goes with --goal")
    spec: dict[str, Any] = ({"goal": args.goal} if args.goal else {"passes": args.passes or "qdq-int8"})
    if args.time_budget is not None:
        spec["time_budget"] = args.time_budget
    start = time.perf_counter()
    skipped: dict[str, str] = {}
    names: list[str] = []
    labels = {ONE: "processes, 1 worker", MANY: f"processes, {args.workers} workers",
              RAY: f"Ray local, {args.workers} workers"}
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        folder = Path(tmp)
        tables = []
        for w in load_workloads(args.models, skipped):  # one at a time: only its files stay
            model, data = write_workload(w, folder)
            tables.append(manifest_table(w, model, data, spec))
            names.append(w.name)
            print(f"[{w.name}] written: {model.stat().st_size / 1e6:.1f} MB model, {data.stat().st_size / 1e6:.1f} "
                  f"MB samples", flush=True)
        for name, reason in skipped.items():
            print(f"[{name}] skipped: {reason}", flush=True)
        if not names:
            raise SystemExit("no workload could be loaded")
        manifest = folder / "manifest.toml"
        manifest.write_text("\n".join(tables), encoding="utf-8")
        for key, workers, ray in ((ONE, 1, False), (MANY, args.workers, False), (RAY, args.workers, True)):
            if ray and importlib.util.find_spec("ray") is None:
                runs[key] = {"not_run": "not run: ray not installed"}
            else:
                runs[key] = run_config(manifest, folder / f"out-{key}", folder / f"fleet-{key}.json", workers, ray)
            shown = {k: v for k, v in runs[key].items() if k != "report"}
            print(f"{labels[key]}: {shown}", flush=True)
    disagree = agreement(runs, labels, names)
    info = machine()
    command = "python benchmarks/bench_fleet.py " + " ".join(sys.argv[1:])
    markdown = render(runs, labels, names, spec, skipped, disagree, info, command, time.perf_counter() - start)
    print(markdown)
    name = f"fleet-goal-{args.goal}" if args.goal else "fleet"  # the qdq-int8 job's table and the long job's both kept
    write(args.out, name, markdown, {"schema": "graphopt.bench-fleet/1", "machine": info, "command": command,
                                     "job": spec, "models": names, "skipped": skipped, "runs": runs,
                                     "labels": labels, "disagreements": disagree})


if __name__ == "__main__":
    main()
