"""The instrument that turns pass-manager events into a ``Report``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from graphopt._proto import model_size
from graphopt.instrument import Instrument
from graphopt.outcome import PassOutcome, PipelineResult
from graphopt.report.model import PassRecord, Report
from graphopt.summary import count_params, summarize
from graphopt.verify.verifier import Verification

__all__ = ["ReportCollector", "worst_output"]


class ReportCollector(Instrument):
    """Appends one ``PassRecord`` per settled pass to ``report`` and the final model's summary at the end."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def before_pipeline(self, model: Any) -> None:
        self.report.input_summary = summarize(model).to_dict()

    def after_pass(self, outcome: PassOutcome) -> None:
        result = outcome.result
        kept = outcome.status.value in ("applied", "narrowed")
        self.report.passes.append(
            PassRecord(
                name=outcome.pass_name,
                status=outcome.status.value,
                reason=outcome.reason,
                lossless=outcome.lossless,
                options=dict(outcome.options),
                stats=dict(result.stats) if result and kept else {},
                skipped=[{"target": s.target, "reason": s.reason} for s in result.skipped] if result else [],
                notes=list(result.notes) if result else [],
                params_before=count_params(outcome.model_before),
                params_after=count_params(outcome.model_after),
                size_before=model_size(outcome.model_before),
                size_after=model_size(outcome.model_after),
                worst=worst_output(outcome.verifications),
                verifications=[v.to_dict() for v in outcome.verifications],
                units=[asdict(u) for u in outcome.units],
                trials=outcome.trials,
                seconds=round(outcome.seconds, 4),
            )
        )

    def after_pipeline(self, result: PipelineResult) -> None:
        self.report.output_summary = summarize(result.model).to_dict()


def worst_output(verifications: tuple[Verification, ...]) -> dict[str, Any] | None:
    """The output furthest from the original model (lowest cosine, then largest error)."""
    against_original = [v for v in verifications if v.against == "original"]
    if not against_original or not against_original[0].stats:
        return None
    stats = against_original[0].stats
    name = min(stats, key=lambda n: (stats[n].cosine, -stats[n].max_abs))
    s = stats[name]
    return {"output": name, "cosine": s.cosine, "cosine_low": s.cosine_low, "top1": s.top1, "top1_low": s.top1_low,
            "iou": s.iou, "iou_low": s.iou_low, "max_abs": s.max_abs, "snr_db": s.to_dict()["snr_db"]}
