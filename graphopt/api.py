"""The Python API: ``optimize`` (load → normalise → (pass → verify)* → save + report), ``inspect``, ``list_passes``.

The CLI is a thin layer over these functions; every CLI flag is a parameter here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx

from graphopt.data import Dataset, input_specs, load_data
from graphopt.instrument import Instrument
from graphopt.manager import PassManager, PipelineResult
from graphopt.modelio import check_destination, load_model, save_bytes, save_model
from graphopt.normalize import NormalizePass
from graphopt.pass_base import PassBase, PassContext
from graphopt.pipeline import build_pipeline
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.registry import available_passes
from graphopt.report.collector import ReportCollector
from graphopt.report.model import Report
from graphopt.report.render import to_json
from graphopt.runtime import RuntimeConfig
from graphopt.summary import ModelSummary, summarize
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

__all__ = ["OptimizeResult", "default_pipeline", "inspect", "list_passes", "optimize", "report_path_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeResult:
    """The optimised model, the run's report, and where both were written (``None`` when not saved)."""

    model: onnx.ModelProto
    report: Report
    pipeline: PipelineResult
    output_path: Path | None = None
    report_path: Path | None = None


def graphopt_version() -> str:
    try:
        return version("graphopt")
    except PackageNotFoundError:
        return "0+unknown"


def default_pipeline() -> list[str]:
    """The passes run when none are named: every registered lossless pass (safe on any data)."""
    return [name for name, cls in available_passes().items() if cls.lossless]


def report_path_for(output: str | Path) -> Path:
    """``out.onnx`` → ``out.report.json`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json")


def optimize(
    model: str | Path | onnx.ModelProto,
    data: str | Path | Dataset = "random",
    *,
    passes: str | Sequence[str | PassBase] | None = None,
    output: str | Path | None = None,
    report: str | Path | None = None,
    tolerance: Tolerance | None = None,
    lossless_tolerance: Tolerance | None = None,
    runtime: RuntimeConfig | None = None,
    calibration_fraction: float = 0.5,
    normalize: bool = True,
    progress: Progress = NULL_PROGRESS,
    instruments: Sequence[Instrument] = (),
) -> OptimizeResult:
    """Optimise ``model`` with ``passes``, verifying each against the original on held-out ``data``.

    Args:
        model: a path to an ONNX file or a loaded ``ModelProto`` (never modified).
        data: an ``.npz`` file or folder of samples, a ``Dataset``, or ``"random"`` (lossless passes only).
        passes: a pipeline string (``"a,b{k=v}"``) or a list of names and ``PassBase`` instances; ``None`` runs
            every registered lossless pass.
        output: where to save the optimised model (atomically, never over the input); ``None`` saves nothing.
        report: where to write the JSON report; defaults to ``<output stem>.report.json`` when ``output`` is set.
        tolerance: the budget every pass is held to against the original model (default cosine ≥ 0.99, top-1
            agreement ≥ 0.99).
        lossless_tolerance: the bound lossless passes are held to against the model before them.
        runtime: onnxruntime settings for verification.
        calibration_fraction: the share of samples given to passes for fitting; the rest verify.
        normalize: run the normalisation pass first (verified lossless like any pass).
        progress: receives progress of calibration and verification.
        instruments: extra observers of the pass manager.
    """
    input_path = None if isinstance(model, onnx.ModelProto) else Path(model)
    protect = (input_path,) if input_path else ()
    report_target = Path(report) if report is not None else report_path_for(output) if output is not None else None
    for target in (output, report_target):
        if target is not None:
            check_destination(target, protect=protect)
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    runtime = runtime or RuntimeConfig()
    tolerance = tolerance or Tolerance.budget()
    lossless_tolerance = lossless_tolerance or Tolerance.lossless()
    pipeline = build_pipeline(passes if passes is not None else default_pipeline())
    dataset = data if isinstance(data, Dataset) else load_data(data, input_specs(original))
    calibration, verification = _split(dataset, calibration_fraction)

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
    )
    verifier = Verifier(original, verification, runtime, progress)
    manager = PassManager(
        verifier,
        PassContext(calibration=calibration, runtime=runtime, progress=progress),
        tolerance,
        lossless_tolerance,
        [ReportCollector(record), *instruments],
    )
    result = manager.run(original, [NormalizePass(), *pipeline] if normalize else pipeline)

    output_path = report_file = None
    if output is not None:
        output_path = save_model(result.model, output, protect=protect, runtime=runtime)
        record.output_path = str(output_path)
    if report_target is not None:
        report_file = save_bytes(to_json(record).encode(), report_target, protect=protect)
    return OptimizeResult(result.model, record, result, output_path, report_file)


def _split(dataset: Dataset, fraction: float) -> tuple[Dataset | None, Dataset]:
    """Synthetic data only verifies; real data is split so no pass is judged on samples it was fitted on."""
    if dataset.synthetic or dataset.n_samples < 2:
        return None, dataset
    return dataset.split(fraction)


def inspect(model: str | Path | onnx.ModelProto) -> ModelSummary:
    """Opset, inputs and outputs, operator histogram, parameter count and size of a model."""
    return summarize(model if isinstance(model, onnx.ModelProto) else load_model(model))


def list_passes() -> dict[str, type[PassBase]]:
    """The registered passes by name."""
    return dict(available_passes())
