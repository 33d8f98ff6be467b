"""graphopt: compress ONNX models with passes, and prove every rewrite safe with onnxruntime.

The flow is load → normalise → (pass → verify)* → save + report; ``optimize`` runs it, and ``validate`` gathers the
evidence that an optimised model can ship (held-out intervals, k-fold, shifted inputs, environments, performance).

The public names are imported on first use (PEP 562), so that ``import graphopt.__main__`` is instant and the
command can answer Ctrl-C during start-up with one line instead of a traceback from inside onnxruntime's import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphopt.api import OptimizeResult, ValidationResult, inspect, list_passes, optimize, validate
    from graphopt.benchmark import BenchResult, bench
    from graphopt.data import Dataset, load_data
    from graphopt.errors import GraphoptError
    from graphopt.pass_base import PassBase, PassContext, PassResult, Skip, Unit
    from graphopt.runtime import RuntimeConfig
    from graphopt.verify.tolerance import Tolerance

try:
    __version__ = version("graphopt")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BenchResult",
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
    "bench",
    "inspect",
    "list_passes",
    "load_data",
    "optimize",
    "validate",
]

_HOMES = {
    **dict.fromkeys(("OptimizeResult", "ValidationResult", "inspect", "list_passes", "optimize", "validate"),
                    "graphopt.api"),
    **dict.fromkeys(("BenchResult", "bench"), "graphopt.benchmark"),
    **dict.fromkeys(("Dataset", "load_data"), "graphopt.data"),
    "GraphoptError": "graphopt.errors",
    **dict.fromkeys(("PassBase", "PassContext", "PassResult", "Skip", "Unit"), "graphopt.pass_base"),
    "RuntimeConfig": "graphopt.runtime",
    "Tolerance": "graphopt.verify.tolerance",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
