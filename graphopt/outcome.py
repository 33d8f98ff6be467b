"""What the pass manager returns: how each pass ended (``PassOutcome``, ``Status``) and the pipeline's result.

Reports, validation and the API read these types; they live apart from the manager so that reading a result never
imports the machinery that produced it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

from graphopt.pass_base import PassResult
from graphopt.verify.verifier import Verification

__all__ = ["PassOutcome", "PipelineResult", "Status", "UnitOutcome"]


class Status(enum.Enum):
    """How a pass ended: applied in full, narrowed to some units, rolled back (verification failed), declined
    (verified but not worth it on the target: not faster), skipped (nothing to do, with the reason) or failed (the
    pass raised: a bug, or a model it could not handle; the reason carries the exception)."""

    APPLIED = "applied"
    NARROWED = "narrowed"
    ROLLED_BACK = "rolled back"
    DECLINED = "declined"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class UnitOutcome:
    """One unit of a narrowed pass: whether it was kept, its sensitivity, and why it was left out."""

    name: str
    applied: bool
    sensitivity: float | None
    detail: str = ""
    reason: str = ""


@dataclass(frozen=True)
class PassOutcome:
    """How one pass ended. ``model_after`` is the accepted model (``model_before`` unless applied or narrowed)."""

    pass_name: str
    options: Mapping[str, Any]
    lossless: bool
    status: Status
    reason: str
    model_before: onnx.ModelProto
    model_after: onnx.ModelProto
    result: PassResult | None = None
    verifications: tuple[Verification, ...] = ()
    units: tuple[UnitOutcome, ...] = ()
    trials: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class PipelineResult:
    model: onnx.ModelProto
    outcomes: tuple[PassOutcome, ...]
