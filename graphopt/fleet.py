"""``graphopt fleet``: optimise every model of a manifest, each one verified run of ``api.optimize``, on a local
process pool or as Ray tasks; a re-run skips the models whose outputs are up to date.

The manifest (TOML) lists the models, paths relative to it::

    [[model]]
    model = "ocr/rec.onnx"
    data = "ocr/rec.npz"
    goal = "latency"                      # or passes = "qdq-int8"; neither: the lossless passes
    name = "rec"                          # optional: OUTDIR/rec.onnx (default: the model file's stem)
    cosine = 0.995                        # optional budget: cosine, top1, iou, snr_db, confidence
    output_kind = { "387" = "classes:-1" }
    time_budget = 120                     # with goal

Each model is one task (``run_job``), run in a worker process (``_on_processes``) or a Ray worker (``_on_ray``): it
is *up to date* when its output and report exist and the output's provenance records the same input files, data
and request (``api.optimization_request``); otherwise it is optimised with verification and saved atomically, so a
killed fleet leaves whole outputs or none, and its re-run continues where it stopped. A model that is refused or crashes is a row with its one-line reason;
the others go on. After the tasks, the driver times each output against its original (single thread, batch 1,
interleaved), one model at a time, so that no task shares the CPU with a timing.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from graphopt import api, perf
from graphopt.benchmark import machine_facts
from graphopt.data import RANDOM, data_files, input_specs, load_data
from graphopt.errors import GraphoptError, OutputPathError, UsageError, first_line
from graphopt.goal import GOALS
from graphopt.modelio import NamedPath, check_destinations, model_files, read_model, save_bytes
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.provenance import data_digest, files_digest, read_provenance
from graphopt.report.html import fleet_page
from graphopt.report.model import FAILED, FLEET_SCHEMA, OPTIMIZED, UP_TO_DATE, FleetReport, FleetRow
from graphopt.runtime import RuntimeConfig
from graphopt.verify.tolerance import Tolerance

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["FLEET_SCHEMA", "FleetJob", "FleetReport", "FleetResult", "FleetRow", "ManifestError", "read_manifest",
           "run_fleet", "run_job"]

log = logging.getLogger(__name__)

_BUDGET_KEYS = ("cosine", "top1", "iou", "snr_db", "confidence")
_KEYS = frozenset({"model", "data", "passes", "goal", "name", "output_kind", "time_budget", *_BUDGET_KEYS})
LOCAL = "local"
"""``--ray local``: Ray started in this process, on this machine."""
RAY_OBJECT_STORE = 256 << 20
"""Bytes of Ray's object store when it starts here: a task returns one row, so a small store spares a container's
shared memory (Ray takes 30% of the RAM by default)."""
TIMING_SECONDS = 1.0
"""Seconds of interleaved runs per output when the driver times it against its original."""


class ManifestError(UsageError):
    """The fleet manifest cannot be read, or a model's table in it is malformed."""


@dataclass(frozen=True)
class FleetJob:
    """One model of the fleet: what ``api.optimize`` is asked (paths absolute) and where its output goes."""

    name: str
    model: str
    data: str
    output: str
    passes: str | None = None
    goal: str | None = None
    budget: Mapping[str, float | None] = field(default_factory=dict)
    """Overrides of the default budget (``Tolerance.budget``): cosine, top1, iou, snr_db, confidence."""
    output_kinds: Mapping[str, str] = field(default_factory=dict)
    time_budget: float | None = None
    threads: int = 1

    def tolerance(self) -> Tolerance:
        """The default budget with the manifest's overrides; confidence 0 judges the means, as ``--confidence 0``."""
        overrides: dict[str, Any] = {k: (None if k == "confidence" and not v else v) for k, v in self.budget.items()}
        return replace(Tolerance.budget(), **overrides)

    def request(self) -> str:
        """What the job asks, as its output records it (``api.optimization_request``)."""
        return api.optimization_request(passes=self.passes, goal=self.goal, tolerance=self.tolerance(),
                                        output_kinds=self.output_kinds, time_budget=self.time_budget)


@dataclass(frozen=True)
class FleetResult:
    """The fleet's report and where it was written (``None`` when not asked for)."""

    report: FleetReport
    report_path: Path | None = None
    html_path: Path | None = None


def read_manifest(path: str | Path, output_dir: str | Path) -> list[FleetJob]:
    """The jobs of the manifest at ``path``, outputs in ``output_dir``; ``ManifestError`` (one line) when it cannot
    be read, a table is malformed, or two models would write the same output."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {path}: {e.strerror or first_line(e)}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not a TOML manifest: {first_line(e)}") from e
    tables = document.get("model")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ManifestError(f"{path}: list the models as [[model]] tables (model = ..., data = ...)")
    jobs = [_job(table, i + 1, path, Path(output_dir)) for i, table in enumerate(tables)]
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs, 1):
        if job.name in seen:
            raise ManifestError(f"{path}: models {seen[job.name]} and {i} would both write {job.name}.onnx; give "
                                "one of them another name")
        seen[job.name] = i
    return jobs


def _job(table: Mapping[str, Any], number: int, manifest: Path, output_dir: Path) -> FleetJob:
    where = f"{manifest}: model {number}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("model", "data"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ManifestError(f"{where}: {key} = \"PATH\" is required")
    for key in ("passes", "goal", "name"):
        if key in table and not isinstance(table[key], str):
            raise ManifestError(f"{where}: {key} must be a string")
    if "passes" in table and "goal" in table:
        raise ManifestError(f"{where}: give passes or goal, not both")
    numbers = {key: table[key] for key in (*_BUDGET_KEYS, "time_budget") if key in table}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ManifestError(f"{where}: {key} must be a number")
    kinds = table.get("output_kind", {})
    if not isinstance(kinds, dict) or not all(isinstance(v, str) for v in kinds.values()):
        raise ManifestError(f"{where}: output_kind must be a table of OUTPUT = \"KIND\"")
    if "goal" in table and table["goal"] not in GOALS:
        raise ManifestError(f"{where}: goal takes one of {', '.join(GOALS)}, got {table['goal']!r}")
    folder = manifest.parent
    model = (folder / table["model"]).resolve()
    name = table.get("name") or model.stem
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ManifestError(f"{where}: name {name!r} must be a plain file stem")
    data = table["data"] if table["data"] == RANDOM else str((folder / table["data"]).resolve())
    job = FleetJob(name, str(model), data,
                   str((output_dir / f"{name}.onnx").resolve()), table.get("passes"), table.get("goal"),
                   {k: float(v) for k, v in numbers.items() if k != "time_budget"}, dict(kinds),
                   float(table["time_budget"]) if "time_budget" in table else None)
    try:
        job.request()  # the passes and the budget, checked before any model runs
    except UsageError as e:
        raise ManifestError(f"{where}: {e}") from e
    return job


def run_job(job: FleetJob) -> FleetRow:
    """Optimise one model with verification and save it, unless its output is up to date; every refusal or crash
    becomes the row's one-line reason. Runs in a worker process (it must be importable there: module level)."""
    began = time.monotonic()
    try:
        row = _up_to_date(job)
        if row is None:
            result = api.optimize(job.model, job.data, passes=job.passes, goal=job.goal, output=job.output,
                                  tolerance=job.tolerance(), runtime=RuntimeConfig(intra_op_threads=job.threads),
                                  output_kinds=dict(job.output_kinds), time_budget=job.time_budget)
            provenance = read_provenance(result.model)
            row = _row(job, OPTIMIZED, result.report.to_dict(), provenance.pipeline if provenance else "")
    except GraphoptError as e:
        row = FleetRow(job.name, FAILED, " ".join(str(e).splitlines()))
    except Exception as e:  # a crash fails its model's row, not the fleet
        log.info("fleet: %s raised", job.name, exc_info=True)
        row = FleetRow(job.name, FAILED, f"internal error ({type(e).__name__}): {first_line(e)}")
    return replace(row, seconds=time.monotonic() - began)


def _up_to_date(job: FleetJob) -> FleetRow | None:
    """The row of a job whose output and report exist and whose output records this job's request, input files
    and data; ``None`` when it must run."""
    output, report = Path(job.output), api.report_path_for(job.output)
    if not (output.is_file() and report.is_file()):
        return None
    try:
        saved = onnx.load_model(output, load_external_data=False)
        record = json.loads(report.read_text(encoding="utf-8"))
    except (DecodeError, OSError, ValueError):  # a damaged output is made again
        return None
    provenance = read_provenance(saved)
    if not isinstance(record, dict):
        return None
    if provenance is None or provenance.request != job.request():
        return None
    if provenance.input_digest != files_digest(model_files(job.model)):
        return None
    if provenance.data_digest != data_digest(load_data(job.data, input_specs(saved))):
        return None
    return _row(job, UP_TO_DATE, record, provenance.pipeline)


def _row(job: FleetJob, status: str, report: Mapping[str, Any], pipeline: str) -> FleetRow:
    """A finished job's row from its report (``graphopt.report/1``)."""
    totals = report.get("totals", {})
    before, after = totals.get("size_before"), totals.get("size_after")
    worst = [p["worst"]["cosine"] for p in report.get("passes", []) if p.get("worst")
             and p["worst"].get("cosine") is not None]
    return FleetRow(job.name, status, output=job.output, pipeline=pipeline,
                    size_ratio=round(after / before, 4) if before and after else None,
                    cosine=worst[-1] if worst else None)


def run_fleet(manifest: str | Path, output_dir: str | Path, *, workers: int | None = None, ray: str | None = None,
              report: str | Path | None = None, html: str | Path | None = None,
              progress: Progress = NULL_PROGRESS) -> FleetResult:
    """Run every model of ``manifest`` (``read_manifest``) on ``workers`` processes (default: the cores; never more
    than the models), each task with the cores divided among the workers as its onnxruntime threads, or with
    ``ray`` as Ray tasks (``_on_ray``: ``"local"`` or a cluster's address); then time the outputs one at a time;
    write the JSON report (``FLEET_SCHEMA``) to ``report`` and the page (``fleet_page``) to ``html`` when given.
    Both are refused before any model runs when they would overwrite the manifest, a model, its data, a model's
    output or report, or each other."""
    cores = os.cpu_count() or 1
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise UsageError(f"--workers takes a whole number of at least 1, got {workers!r}")
    jobs = read_manifest(manifest, output_dir)
    inputs = _fleet_files(manifest, jobs)
    _prepare(Path(output_dir), [(label, Path(p)) for label, p in (("the report", report), ("the HTML page", html))
                                if p is not None], inputs)
    workers = min(workers or cores, len(jobs))  # no more processes than models
    threads = max(1, cores // workers)
    jobs = [replace(job, threads=threads) for job in jobs]
    began = time.monotonic()
    rows = _on_processes(jobs, workers, progress) if ray is None else _on_ray(jobs, ray, cores, progress)
    rows = [_timed(job, row) for job, row in zip(jobs, rows, strict=True)]
    timing = (f"latency: each output against its original after the tasks, one model at a time (single thread, "
              f"batch 1, interleaved, {TIMING_SECONDS:g} s each)")
    executor = "processes" if ray is None else "Ray tasks (local)" if ray == LOCAL else f"Ray tasks at {ray}"
    fleet = FleetReport(str(manifest), str(output_dir), executor, workers, threads, tuple(rows),
                        time.monotonic() - began, machine_facts(), (timing,))
    protect = [p for _, p in inputs]  # the report and the page were checked distinct from each other above
    report_path = save_bytes((json.dumps(fleet.to_dict(), indent=2) + "\n").encode(), report,
                             protect=protect) if report is not None else None
    html_path = save_bytes(fleet_page(fleet).encode(), html, protect=protect) if html is not None else None
    return FleetResult(fleet, report_path, html_path)


def _fleet_files(manifest: str | Path, jobs: Sequence[FleetJob]) -> list[NamedPath]:
    """What the fleet's own report and page must never overwrite: the manifest, each model and its data, and each
    model's output and report."""
    files: list[NamedPath] = [("the manifest", Path(manifest))]
    for job in jobs:
        files += [(f"the model of {job.name}", Path(job.model)),
                  *((f"a data file of {job.name}", f) for f in data_files(job.data)),
                  (f"the output of {job.name}", Path(job.output)),
                  (f"the report of {job.name}", api.report_path_for(job.output))]
    return files


def _prepare(output_dir: Path, outputs: Sequence[NamedPath], inputs: Sequence[NamedPath]) -> None:
    """Make ``output_dir`` (the report or page may go in it), then check ``outputs`` (``check_destinations``); a
    refusal removes the folders it made, so that it writes nothing."""
    made = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_destinations(outputs, inputs)
    except OutputPathError:
        for folder in made:
            folder.rmdir()
        raise


def _on_processes(jobs: Sequence[FleetJob], workers: int, progress: Progress) -> list[FleetRow]:
    """``run_job`` of every job on a pool of ``workers`` fresh (spawned) processes; rows in job order. A worker that
    dies (out of memory, a crash in native code) fails the jobs it left unfinished, with that reason."""
    rows: dict[str, FleetRow] = {}
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds onnxruntime's threads
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        with progress.task(f"fleet: {len(jobs)} models on {workers} worker(s)", len(jobs)) as advance:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    rows[job.name] = future.result()
                except BrokenProcessPool:
                    rows[job.name] = FleetRow(job.name, FAILED, "its worker process died (out of memory, or a crash "
                                                                "in native code)")
                advance(1)
    except BaseException:  # interrupted: start nothing more; a running task finishes its atomic write, or not at all
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [rows[job.name] for job in jobs]


def _on_ray(jobs: Sequence[FleetJob], address: str, cores: int, progress: Progress) -> list[FleetRow]:
    """``run_job`` of every job as a Ray task asking for its onnxruntime threads as CPUs, so that as many run at once
    as ``--workers`` allows here; rows in job order. ``address`` ``local`` starts Ray in this process with this
    machine's cores (and stops it after); another address joins that cluster, whose workers read the models and
    data at the same paths. A task that fails in Ray (its worker died) fails its row with Ray's reason."""
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError as e:
        raise UsageError("--ray needs Ray: pip install 'graphopt[ray]'") from e
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=None if address == LOCAL else address, num_cpus=cores if address == LOCAL else None,
                     object_store_memory=RAY_OBJECT_STORE if address == LOCAL else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--ray {address}: cannot start or reach Ray: {first_line(e)}") from e
    rows: dict[str, FleetRow] = {}
    try:
        task = ray.remote(run_job)
        refs = {task.options(num_cpus=job.threads).remote(job): job for job in jobs}
        pending = list(refs)
        with progress.task(f"fleet: {len(jobs)} models as Ray tasks", len(jobs)) as advance:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                job = refs[done[0]]
                try:
                    rows[job.name] = ray.get(done[0])
                except RayError as e:
                    rows[job.name] = FleetRow(job.name, FAILED, f"its Ray task failed: {first_line(e)}")
                advance(1)
    finally:
        if started:
            ray.shutdown()
    return [rows[job.name] for job in jobs]


def _timed(job: FleetJob, row: FleetRow) -> FleetRow:
    """``row`` with its output's latency against the original on the first sample (single thread, batch 1,
    interleaved); unchanged when it has no output, or with the reason when either cannot be timed."""
    if row.status == FAILED or row.output is None:
        return row
    try:
        original, output = read_model(job.model).model, read_model(row.output).model
        dataset = load_data(job.data, input_specs(original))
        feed = next(dataset.batches(1, per_sample=True))[0]
        first, second = perf.measure_latency([original, output], feed, runs=2000, budget_s=2 * TIMING_SECONDS)
    except (GraphoptError, RuntimeError) as e:
        return replace(row, reason=f"not timed: {first_line(e)}")
    return replace(row, latency_ratio=round(second.median_ms / first.median_ms, 3))

