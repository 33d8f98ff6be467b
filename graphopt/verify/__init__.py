"""Verification: error metrics (pure), tolerances and verdicts, and the verifier that runs models on held-out data."""

from __future__ import annotations

from graphopt.verify.metrics import ErrorStats, error_stats
from graphopt.verify.tolerance import Tolerance, Verdict, judge
from graphopt.verify.verifier import Verification, Verifier

__all__ = ["ErrorStats", "Tolerance", "Verdict", "Verification", "Verifier", "error_stats", "judge"]
