"""The Python API: ``optimize`` (load → normalise → (pass → verify)* → save + report), ``validate`` (can this
optimised model ship?), ``inspect``, ``list_passes``.

The CLI is a thin layer over these functions; every CLI flag is a parameter here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import onnx

import graphopt
from graphopt.data import RANDOM, Dataset, data_files, input_specs, load_data
from graphopt.errors import DataError, GraphoptError, PipelineError, UsageError, ValidationSetupError
from graphopt.goal import DEFAULT_TIME_BUDGET, GOALS, GoalName, Resume
from graphopt.goal import search as search_goal
from graphopt.graph import copy_model, free_copies, model_digest
from graphopt.instrument import Instrument
from graphopt.manager import PassManager
from graphopt.modelio import (
    LoadedModel,
    NamedPath,
    check_destinations,
    logging_to,
    model_sidecar,
    read_model,
    save_bytes,
    save_model,
)
from graphopt.normalize import DropInferredShapesPass, NormalizePass
from graphopt.outcome import PassOutcome, PipelineResult
from graphopt.pass_base import PassBase, PassContext
from graphopt.pipeline import build_pipeline, describe_pipeline, named_file
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.provenance import Provenance, data_digest, files_digest, read_provenance, stamp_provenance
from graphopt.registry import available_passes
from graphopt.report.collector import ReportCollector
from graphopt.report.html import optimize_page, validation_page
from graphopt.report.model import Report
from graphopt.report.render import to_json, validation_json
from graphopt.runtime import RuntimeConfig, check_providers
from graphopt.summary import ModelSummary, summarize
from graphopt.validation.context import ValidationContext
from graphopt.validation.environments import check_environments
from graphopt.validation.folds import Refit, check_folds
from graphopt.validation.held_out import Metric, check_held_out, load_metric
from graphopt.validation.model import ValidationReport
from graphopt.validation.performance import check_performance
from graphopt.validation.shifts import Shift, check_shifts
from graphopt.verify.output_kinds import OutputKind, parse_output_kind
from graphopt.verify.output_kinds import output_kinds as read_output_kinds
from graphopt.verify.task import TaskBudget
from graphopt.verify.tolerance import MIN_BOUNDED_SAMPLES, Tolerance, check_number
from graphopt.verify.verifier import Verifier

__all__ = [
    "DEFAULT_PIPELINE",
    "SECTIONS",
    "OptimizeResult",
    "ValidationResult",
    "default_pipeline",
    "inspect",
    "list_passes",
    "optimization_request",
    "optimize",
    "report_path_for",
    "run_pipeline",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeResult:
    """The optimised model, the run's report, and where both were written (``None`` when not saved)."""

    model: onnx.ModelProto
    report: Report
    pipeline: PipelineResult
    output_path: Path | None = None
    report_path: Path | None = None
    html_path: Path | None = None


def graphopt_version() -> str:
    return graphopt.__version__


DEFAULT_PIPELINE = ("fast-prelu", "zero-weight-elimination")
"""The passes run when none are named: graphopt's own lossless passes, in this order. A pass from another package
runs only when named (``--passes``), so installing a plugin never changes what a run does."""


def default_pipeline() -> list[str]:
    """``DEFAULT_PIPELINE`` as a list."""
    return list(DEFAULT_PIPELINE)


def report_path_for(output: str | Path) -> Path:
    """``out.onnx`` → ``out.report.json`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json")


def optimize(
    model: str | Path | onnx.ModelProto,
    data: str | Path | Dataset = "random",
    *,
    passes: str | Path | Sequence[str | PassBase] | None = None,
    output: str | Path | None = None,
    report: str | Path | None = None,
    tolerance: Tolerance | None = None,
    lossless_tolerance: Tolerance | None = None,
    runtime: RuntimeConfig | None = None,
    calibration_fraction: float = 0.5,
    normalize: bool = True,
    progress: Progress = NULL_PROGRESS,
    instruments: Sequence[Instrument] = (),
    html: str | Path | None = None,
    labels: str | Path | None = None,
    metric: str | Metric | None = None,
    max_drop: float = 0.01,
    output_kinds: Mapping[str, OutputKind | str] | None = None,
    goal: str | None = None,
    time_budget: float | None = None,
    log_file: str | Path | None = None,
    log_level: int = logging.INFO,
) -> OptimizeResult:
    """Optimise ``model`` with ``passes``, verifying each against the original on held-out ``data``.

    Args:
        model: a path to an ONNX file or a loaded ``ModelProto`` (never modified).
        data: an ``.npz`` file or folder of samples, a ``Dataset``, or ``"random"`` (lossless passes only).
        passes: a pipeline string (``"a,b{k=v}"``), a pipeline file (``.toml``, or an earlier run's ``.json``
            report: its ``pipeline``), or a list of names and ``PassBase`` instances; ``None`` runs
            ``DEFAULT_PIPELINE`` (graphopt's lossless passes; a plugin's passes run only when named).
        output: where to save the optimised model (atomically, never over the input); ``None`` saves nothing.
        report: where to write the JSON report; defaults to ``<output stem>.report.json`` when ``output`` is set.
        tolerance: the budget every pass is held to against the original model (default cosine ≥ 0.99, top-1
            agreement ≥ 0.99).
        lossless_tolerance: the bound lossless passes are held to against the model before them.
        runtime: onnxruntime settings for verification.
        calibration_fraction: the share of samples given to passes for fitting; the rest verify.
        normalize: run the normalisation pass first and drop the shapes it inferred last (both verified lossless).
        progress: receives progress of calibration and verification.
        instruments: extra observers of the pass manager.
        html: where to write the run as a self-contained HTML page.
        labels: the name of a label array in the data file, or an ``.npy`` file of them (needed by ``metric``).
        metric: a task metric (``graphopt.metrics`` entry point name, or a callable scoring each sample) that every
            pass is also held to: it may drop at most ``max_drop`` against the original (its upper confidence
            bound, at the tolerance's confidence).
        output_kinds: how named outputs are judged where the graph does not say (``{"logits": "classes:-1"}``,
            ``"mask:0.3"``, ``"values"``; see ``graphopt.verify.output_kinds``); the others are read from the graph.
        goal: ``"latency"``, ``"size"`` or ``"latency,size"`` (their product) instead of ``passes``: graphopt
            tries a plan per pass setting that serves the goal and combinations of two under a split budget, each
            verified under the budget, compares the results and keeps the best, or the original when none beats it
            (``graphopt.goal``; the report's ``goal`` lists every plan).
        time_budget: with ``goal``, the seconds of search (default ``graphopt.goal.DEFAULT_TIME_BUDGET``, 240):
            then the running plan's narrowing keeps the units verified so far and no further plan is started.
        log_file: write graphopt's log (records at ``log_level`` and above) to this file instead of where logging
            goes otherwise; it is an output like the others (never an input or another output), replaced whole when
            the run ends, however it ends.

    The optimised model records the pipeline, a digest of the data and the calibration share in its metadata, so
    ``validate`` can tell held-out samples from calibration ones and re-run the pipeline on folds.
    """
    if not 0.0 < calibration_fraction < 1.0:  # NaN fails this too
        raise UsageError(f"calibration fraction must be between 0 and 1, got {calibration_fraction!r}")
    if goal is not None and (passes is not None or goal not in GOALS):
        raise UsageError(f"--goal takes one of {', '.join(GOALS)}, got {goal!r}" if goal not in GOALS else
                         "--goal chooses the passes itself: give --goal or --passes, not both")
    check_number("time_budget", time_budget, low=0.0)
    pipeline = build_pipeline(passes if passes is not None else default_pipeline())
    lossy = [p.name for p in pipeline if not p.lossless] + ([f"--goal {goal}"] if goal is not None else [])
    synthetic = data.synthetic if isinstance(data, Dataset) else str(data) == RANDOM
    if synthetic and lossy:
        raise PipelineError(f"{', '.join(lossy)} {'is' if len(lossy) == 1 else 'are'} lossy and must be verified on "
                            "real samples: give --data FILE.npz (random data verifies lossless passes only)")
    original, loaded = _read(model)
    kinds = read_output_kinds(original, output_kinds)
    input_path = None if loaded is None else loaded.files[0]
    report_target = Path(report) if report is not None else report_path_for(output) if output is not None else None
    inputs = _named_inputs(loaded, data, labels)
    pipeline_path = named_file(passes)
    if pipeline_path is not None:
        inputs.append(("the pipeline file", pipeline_path))
    outputs = [(label, Path(p)) for label, p in (("the output model", output), ("the report", report_target),
                                                  ("the HTML page", html), ("the log", log_file)) if p is not None]
    if output is not None:
        outputs.insert(1, ("the output model's external data", model_sidecar(output)))
    check_destinations(outputs, inputs)
    protect = tuple(p for _, p in (*inputs, *outputs))
    with _logging(log_file, log_level, protect):
        runtime = runtime or RuntimeConfig()
        check_providers(runtime)
        tolerance = tolerance or Tolerance.budget()
        lossless_tolerance = lossless_tolerance or Tolerance.lossless()
        check_number("max_drop", max_drop, low=0.0, optional=False)
        task = None
        if metric is not None:
            name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
            task = TaskBudget(name, load_metric(metric) if isinstance(metric, str) else metric, max_drop)
        specs = input_specs(original)
        dataset = data if isinstance(data, Dataset) else load_data(data, specs, labels)
        if task is not None and dataset.labels is None:
            raise UsageError(f"the task metric {task.name} needs labels: give --labels (an array of the data file or an "
                             ".npy file)")
        calibration, verification = _split(dataset, calibration_fraction)
        if lossy and tolerance.confidence is not None and verification.n_samples < MIN_BOUNDED_SAMPLES:
            needed = math.ceil(MIN_BOUNDED_SAMPLES / (1 - calibration_fraction))
            raise DataError(f"too few samples to decide: lossy passes are judged on the {tolerance.confidence:.0%} lower "
                            f"confidence bound over at least {MIN_BOUNDED_SAMPLES} verification samples, and "
                            f"{dataset.n_samples} samples give {verification.n_samples}; give at least {needed} (or "
                            "--confidence 0 to judge the means)")

        verifier = Verifier(original, verification, runtime, progress, task, kinds)  # --goal's plans share its reference

        def run(plan: Sequence[PassBase], speed_gate: bool = True, budgets: Mapping[PassBase, Tolerance] | None = None,
                deadline: float | None = None, resume: Resume | None = None) -> tuple[Report, PipelineResult]:
            record = Report(
                graphopt_version=graphopt_version(),
                input_path=str(input_path) if input_path else None,
                data={
                    "source": dataset.source,
                    "synthetic": dataset.synthetic,
                    "samples": dataset.n_samples,
                    "calibration_samples": calibration.n_samples if calibration else 0,
                    "verification_samples": verification.n_samples,
                },
                runtime=asdict(runtime),
                tolerance=tolerance.to_dict(),
                lossless_tolerance=lossless_tolerance.to_dict(),
                outputs={name: kind.to_dict() for name, kind in kinds.items()},
            )
            if resume is not None:  # its records up to where this run continues it
                record.passes = resume.record.passes[:len(resume.record.passes) - (1 if normalize else 0)]
            result = run_pipeline(original, plan[resume.ran:] if resume else plan, calibration, verification,
                                  tolerance=tolerance, lossless_tolerance=lossless_tolerance, runtime=runtime,
                                  normalize=normalize, progress=progress,
                                  instruments=[ReportCollector(record), *instruments], task=task, kinds=kinds,
                                  speed_gate=speed_gate, budgets=budgets, verifier=verifier, deadline=deadline,
                                  after=resume.result if resume else None)
            if resume is not None:
                record.input_summary = resume.record.input_summary
            return record, result

        if goal is None:
            record, result = run(pipeline)
        else:
            feed = next(verification.batches(1, per_sample=True))[0]
            record, result, pipeline = search_goal(cast(GoalName, goal), run, pipeline, available_passes(), original,
                                                   feed, tolerance,
                                                   DEFAULT_TIME_BUDGET if time_budget is None else time_budget, progress)
        final = copy_model(result.model) if result.model is original else result.model  # never stamp the caller's model
        as_run = _as_run(pipeline, result.outcomes)
        record.pipeline = [{"name": p.name, "options": asdict(p.options)} for p in as_run]
        asked = optimization_request(passes=None if goal is not None else pipeline, goal=goal, tolerance=tolerance,
                                     calibration_fraction=calibration_fraction, output_kinds=output_kinds,
                                     metric=task.name if task is not None else None, max_drop=max_drop,
                                     time_budget=time_budget, normalize=normalize)
        digest = files_digest(loaded.files) if loaded is not None else model_digest(original).hex()
        stamp_provenance(final, Provenance(describe_pipeline(as_run), data_digest(dataset), calibration_fraction,
                                           input_digest=digest, request=asked))

        output_path = report_file = html_file = None
        if output is not None:
            free_copies(final)  # the last trials' sessions, before the saved file is loaded to check it
            output_path = save_model(final, output, protect=_others(protect, output, model_sidecar(output)),
                                     runtime=runtime)
            record.output_path = str(output_path)
        if report_target is not None:
            report_file = save_bytes(to_json(record).encode(), report_target, protect=_others(protect, report_target))
        if html is not None:
            html_file = save_bytes(optimize_page(record).encode(), html, protect=_others(protect, html))
        return OptimizeResult(final, record, result, output_path, report_file, html_file)


def optimization_request(*, passes: str | Path | Sequence[str | PassBase] | None = None, goal: str | None = None,
                         tolerance: Tolerance | None = None, calibration_fraction: float = 0.5,
                         output_kinds: Mapping[str, OutputKind | str] | None = None, metric: str | None = None,
                         max_drop: float = 0.01, time_budget: float | None = None, normalize: bool = True) -> str:
    """What ``optimize`` with these arguments is asked, as the canonical text its output records
    (``Provenance.request``): the pipeline (as ``describe_pipeline`` writes it) or the goal and its time budget, the
    budget, the calibration share, the output kinds named, the task metric. Two runs asked the same on the same model
    and data files make the same model, so ``graphopt fleet`` skips an output that records it."""
    asked: dict[str, object] = (
        {"goal": goal, "time_budget": DEFAULT_TIME_BUDGET if time_budget is None else time_budget} if goal is not None
        else {"passes": describe_pipeline(build_pipeline(passes if passes is not None else default_pipeline()))})
    asked |= {"tolerance": (tolerance or Tolerance.budget()).to_dict(), "calibration_fraction": calibration_fraction,
              "output_kinds": {name: (parse_output_kind(kind) if isinstance(kind, str) else kind).to_dict()
                               for name, kind in sorted((output_kinds or {}).items())},
              "normalize": normalize}
    if metric is not None:
        asked |= {"metric": metric, "max_drop": max_drop}
    return json.dumps(asked, sort_keys=True, separators=(",", ":"))


def _logging(log_file: str | Path | None, level: int, protect: tuple[Path, ...]
             ) -> contextlib.AbstractContextManager[object]:
    """The run's log into ``log_file`` (``modelio.logging_to``), or the logging as the caller set it up."""
    if log_file is None:
        return contextlib.nullcontext()
    return logging_to(log_file, level, protect=_others(protect, log_file))


def _as_run(pipeline: Sequence[PassBase], outcomes: Sequence[PassOutcome]) -> list[PassBase]:
    """``pipeline`` with each pass's options as it ran: the speed gate may have kept one of its speed variants
    (``qdq-int8{regions=off}``), which is what a refit must repeat. ``outcomes`` are in pipeline order, the
    framework's own passes among them."""
    ran: list[PassBase] = []
    pending = iter(outcomes)
    for pass_ in pipeline:
        outcome = next((o for o in pending if o.pass_name == pass_.name), None)
        options = dict(outcome.options) if outcome is not None else None
        same = options is None or options == asdict(pass_.options)
        ran.append(pass_ if same else type(pass_)(type(pass_.options)(**options)))  # type: ignore[arg-type]
    return ran


def _read(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, LoadedModel | None]:
    """A model given as a path is read (with the files it came from); a ``ModelProto`` is used as it is."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    loaded = read_model(model)
    return loaded.model, loaded


def _named_inputs(loaded: LoadedModel | None, data: str | Path | Dataset,
                  labels: str | Path | None = None, role: str = "the input model") -> list[NamedPath]:
    """Every file a run reads, named for error messages: outputs must never be written over one of them."""
    named: list[NamedPath] = []
    if loaded is not None:
        named.append((role, loaded.files[0]))
        named.extend((f"{role}'s external data", f) for f in loaded.files[1:])
    if not isinstance(data, Dataset):
        named.extend(("a data file", f) for f in data_files(data, labels))
    return named


def _others(protect: tuple[Path, ...], *targets: str | Path) -> tuple[Path, ...]:
    """The protected files but ``targets`` themselves (checked distinct from all of them before the run)."""
    return tuple(p for p in protect if p not in {Path(t) for t in targets})


def run_pipeline(
    original: onnx.ModelProto,
    pipeline: Sequence[PassBase],
    calibration: Dataset | None,
    verification: Dataset,
    *,
    tolerance: Tolerance,
    lossless_tolerance: Tolerance,
    runtime: RuntimeConfig,
    normalize: bool = True,
    progress: Progress = NULL_PROGRESS,
    instruments: Sequence[Instrument] = (),
    task: TaskBudget | None = None,
    kinds: Mapping[str, OutputKind] | None = None,
    speed_gate: bool = True,
    budgets: Mapping[PassBase, Tolerance] | None = None,
    verifier: Verifier | None = None,
    deadline: float | None = None,
    after: PipelineResult | None = None,
) -> PipelineResult:
    """The manager's run of ``pipeline`` (after normalisation), fitting on ``calibration`` and verifying on
    ``verification`` against ``original``, each output judged by its kind (default: read from the graph): the one
    code path of ``optimize`` and of ``validate``'s fold refits (which judge accuracy only: ``speed_gate`` off).
    ``budgets`` holds passes to a share of the budget (``PassManager.run``). ``verifier``, when given, is one made
    for the same original and samples by an earlier run (its reference outputs are kept, not computed again).
    After ``deadline`` (a ``time.monotonic()``) narrowing makes no further trial.

    ``after``, an earlier result of this function for the same original, samples and settings, is continued:
    ``pipeline`` runs on the model its passes made (before its closing shape drop), which is what running its
    passes and then ``pipeline`` would give, without running them again; the outcomes are its then the new ones."""
    verifier = verifier or Verifier(original, verification, runtime, progress, task, kinds)
    context = PassContext(calibration=calibration, runtime=runtime, progress=progress)
    manager = PassManager(verifier, context, tolerance, lossless_tolerance, list(instruments), speed_gate=speed_gate,
                          deadline=deadline)
    inferred = DropInferredShapesPass(frozenset(v.name for v in original.graph.value_info))
    closing = [inferred] if normalize else []
    if after is not None:
        kept = after.outcomes[:len(after.outcomes) - len(closing)]
        start = kept[-1].model_after if kept else original
        result = manager.run(start, [*pipeline, *closing], budgets, previous=verifier.outputs(start))
        return PipelineResult(result.model, (*kept, *result.outcomes))
    return manager.run(original, [*([NormalizePass()] if normalize else []), *pipeline, *closing], budgets)


SECTIONS = ("held_out", "folds", "shifts", "environments", "performance")


@dataclass(frozen=True)
class ValidationResult:
    """The validation report and where it was written (``None`` when not asked for)."""

    report: ValidationReport
    report_path: Path | None = None
    html_path: Path | None = None


def validate(
    original: str | Path | onnx.ModelProto,
    optimized: str | Path | onnx.ModelProto,
    data: str | Path | Dataset,
    *,
    labels: str | Path | None = None,
    passes: str | None = None,
    sections: Sequence[str] = SECTIONS,
    folds: int = 5,
    shifts: Sequence[Shift] | None = None,
    metric: str | Metric | None = None,
    max_accuracy_drop: float | None = 0.01,
    tolerance: Tolerance | None = None,
    runtime: RuntimeConfig | None = None,
    seed: int = 0,
    report: str | Path | None = None,
    html: str | Path | None = None,
    progress: Progress = NULL_PROGRESS,
    output_kinds: Mapping[str, OutputKind | str] | None = None,
    log_file: str | Path | None = None,
    log_level: int = logging.INFO,
) -> ValidationResult:
    """Answer "can I ship ``optimized`` in place of ``original``?" with evidence, section by section.

    Args:
        original, optimized: paths or loaded models (never modified); their inputs and outputs must match.
        data: real samples (``.npz`` file or folder, or a ``Dataset``). When ``optimized`` records that it was
            calibrated on these very samples, only the share it did not see is held out.
        labels: the name of a label array in the data file, or an ``.npy`` file: adds task accuracy.
        passes: the pipeline that made ``optimized`` (default: the one it records); k-fold re-runs it.
        sections: which of ``held_out``, ``folds``, ``shifts``, ``environments``, ``performance`` to run.
        folds: k of the k-fold section (the number of held-out samples for leave-one-out).
        shifts: input shifts to verify under (default: chosen by input kind, plus ``graphopt.shifts`` hooks).
        metric: a task metric (callable or ``graphopt.metrics`` entry point name) used instead of accuracy.
        max_accuracy_drop: the largest accuracy (or metric) loss that passes; ``None`` only reports it.
        tolerance: the budget every comparison is held to (default cosine ≥ 0.99, top-1 ≥ 0.99).
        report, html: where to write the JSON report and the HTML page.
        output_kinds: how named outputs are judged where the graph does not say (as ``optimize`` takes them).
        log_file: write graphopt's log (records at ``log_level`` and above) to this file instead of where logging
            goes otherwise; it is an output like the others (never an input or another output), replaced whole when
            the run ends, however it ends.
    """
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValidationSetupError(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    if max_accuracy_drop is not None:
        check_number("max_accuracy_drop", max_accuracy_drop, low=0.0, high=1.0)
    check_providers(runtime or RuntimeConfig())
    reference, loaded_reference = _read(original)
    candidate, loaded_candidate = _read(optimized)
    inputs = [*_named_inputs(loaded_reference, data, labels, role="the original model"),
              *_named_inputs(loaded_candidate, "random", role="the optimised model")]
    outputs = [(label, Path(p)) for label, p in (("the report", report), ("the HTML page", html),
                                                  ("the log", log_file)) if p is not None]
    check_destinations(outputs, inputs)
    protect = tuple(p for _, p in (*inputs, *outputs))
    with _logging(log_file, log_level, protect):
        specs = input_specs(reference)
        if input_specs(candidate) != specs or _outputs(candidate) != _outputs(reference):
            raise ValidationSetupError("the two models differ in their inputs or outputs; validate compares a model "
                                       "with its own optimised version")
        dataset = data if isinstance(data, Dataset) else load_data(data, specs, labels)
        if dataset.synthetic:
            raise ValidationSetupError("validation needs real samples, not --data random")
        recorded = read_provenance(candidate)
        held_out, held_note = _held_out(dataset, recorded)
        pipeline = passes if passes is not None else recorded.pipeline if recorded else None
        ctx = ValidationContext(reference, candidate, dataset, held_out, tolerance or Tolerance.budget(),
                                runtime or RuntimeConfig(), pipeline=pipeline, seed=seed, progress=progress,
                                named_kinds=output_kinds or {})
        record = ValidationReport(graphopt_version(),
                                  str(loaded_reference.files[0]) if loaded_reference else None,
                                  str(loaded_candidate.files[0]) if loaded_candidate else None,
                                  data={"source": dataset.source, "samples": dataset.n_samples,
                                        "held_out_samples": held_out.n_samples, "labels": dataset.labels is not None,
                                        "held_out": held_note, "pipeline": pipeline},
                                  tolerance=ctx.tolerance.to_dict())
        task = load_metric(metric) if isinstance(metric, str) else metric
        for name in (s for s in SECTIONS if s in sections):
            if name == "held_out":
                record.sections.append(check_held_out(ctx, metric=task, max_accuracy_drop=max_accuracy_drop))
            elif name == "folds":
                refit = _refit(reference, pipeline, ctx) if pipeline else None
                record.sections.append(check_folds(ctx, min(folds, held_out.n_samples), refit))
            elif name == "shifts":
                record.sections.append(check_shifts(ctx, shifts))
            elif name == "environments":
                record.sections.append(check_environments(ctx))
            else:
                record.sections.append(check_performance(ctx))
        report_file = save_bytes(validation_json(record).encode(), report, protect=_others(protect, report)) if report else None
        html_file = save_bytes(validation_page(record).encode(), html, protect=_others(protect, html)) if html else None
        return ValidationResult(record, report_file, html_file)


def _outputs(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _held_out(dataset: Dataset, recorded: Provenance | None) -> tuple[Dataset, str]:
    """The samples ``optimized`` was not fitted on, and how that was decided."""
    if recorded is None:
        return dataset, "all samples: the optimised model does not record its calibration data"
    if recorded.data_digest != data_digest(dataset):
        return dataset, "all samples: the model was optimised on other data"
    try:
        lossless = all(p.lossless for p in build_pipeline(recorded.pipeline))
    except GraphoptError:  # a pass not installed here: assume it fitted on data
        lossless = False
    if lossless:
        return dataset, "all samples: the model was made by lossless passes only"
    _, held_out = dataset.split(recorded.calibration_fraction, recorded.split_seed)
    return held_out, (f"{held_out.n_samples} of {dataset.n_samples}: the share the model was not calibrated on "
                      f"(recorded: calibration fraction {recorded.calibration_fraction:g}); optimize verified, "
                      f"not fitted, on them: a separate data file is the stricter test")


def _refit(original: onnx.ModelProto, pipeline: str, ctx: ValidationContext) -> Refit:
    """The pipeline re-run with fresh pass instances on a (calibration, verification) split, as ``optimize`` runs it."""
    build_pipeline(pipeline)  # an unknown pass or bad option fails before any fold runs

    def refit(calibration: Dataset, verification: Dataset) -> PipelineResult:
        return run_pipeline(original, build_pipeline(pipeline), calibration, verification, tolerance=ctx.tolerance,
                            lossless_tolerance=Tolerance.lossless(), runtime=ctx.runtime, progress=ctx.progress,
                            kinds=ctx.kinds, speed_gate=False)  # a verdict across folds is accuracy's, not timing's
    return refit


def _split(dataset: Dataset, fraction: float) -> tuple[Dataset | None, Dataset]:
    """Synthetic data only verifies; real data is split so no pass is judged on samples it was fitted on."""
    if dataset.synthetic or dataset.n_samples < 2:
        return None, dataset
    return dataset.split(fraction)


def inspect(model: str | Path | onnx.ModelProto) -> ModelSummary:
    """Opset, inputs and outputs, operator histogram, parameter count and size of a model."""
    return summarize(model if isinstance(model, onnx.ModelProto) else read_model(model).model)


def list_passes() -> dict[str, type[PassBase]]:
    """The registered passes by name."""
    return dict(available_passes())
