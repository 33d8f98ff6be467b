"""graphopt: compress ONNX models with passes, and prove every rewrite safe with onnxruntime.

The flow is load → normalise → (pass → verify)* → save + report; ``optimize`` runs it, and ``validate`` gathers the
evidence that an optimised model can ship (held-out intervals, k-fold, shifted inputs, environments, performance).
"""

from __future__ import annotations

from graphopt.api import OptimizeResult, ValidationResult, inspect, list_passes, optimize, validate
from graphopt.data import Dataset, load_data
from graphopt.errors import GraphoptError
from graphopt.pass_base import PassBase, PassContext, PassResult, Skip, Unit
from graphopt.runtime import RuntimeConfig
from graphopt.verify.tolerance import Tolerance

__all__ = [
    "Dataset",
    "GraphoptError",
    "OptimizeResult",
    "PassBase",
    "PassContext",
    "PassResult",
    "RuntimeConfig",
    "Skip",
    "Tolerance",
    "Unit",
    "ValidationResult",
    "inspect",
    "list_passes",
    "load_data",
    "optimize",
    "validate",
]
