"""Instruments observe the pass manager: reports, timings, dumps and progress hook in here, not into passes.

The manager calls these hooks in order: ``before_pipeline``, then per pass ``before_pass``, ``after_verify`` (once
per verification, narrowing trials included) and ``after_pass``, and finally ``after_pipeline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from graphopt.outcome import PassOutcome, PipelineResult
    from graphopt.pass_base import PassBase
    from graphopt.verify.verifier import Verification

__all__ = ["Instrument"]


class Instrument:
    """Base class with no-op hooks; override the ones you need."""

    def before_pipeline(self, model: onnx.ModelProto) -> None:
        """Called once with the input model."""

    def before_pass(self, pass_: PassBase, model: onnx.ModelProto) -> None:
        """Called before each pass runs."""

    def after_verify(self, pass_: PassBase, verification: Verification) -> None:
        """Called after each verification of a candidate produced by ``pass_``."""

    def after_pass(self, outcome: PassOutcome) -> None:
        """Called when a pass is settled: applied, narrowed, rolled back, declined, skipped or failed."""

    def after_pipeline(self, result: PipelineResult) -> None:
        """Called once with the final model and every outcome."""
