"""graphopt: compress ONNX models with passes, and prove every rewrite safe with onnxruntime.

The flow is load → normalise → (pass → verify)* → save + report; ``optimize`` runs it.
"""

from __future__ import annotations

from graphopt.api import OptimizeResult, inspect, list_passes, optimize
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
    "inspect",
    "list_passes",
    "load_data",
    "optimize",
]
