"""What every validation section reads: the two models, the held-out samples, the tolerance and the runtime."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphopt.data import Dataset
from graphopt.outputs import Outputs
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.output_kinds import OutputKind, output_kinds
from graphopt.verify.tolerance import Tolerance

__all__ = ["ValidationContext"]


@dataclass
class ValidationContext:
    """The inputs of a validation run. ``held_out`` are samples never used to fit the optimised model; ``data`` is
    every sample (k-fold refits on its folds); ``labels`` align with ``held_out`` (and ``all_labels`` with ``data``).
    ``pipeline`` is the pass pipeline that made ``optimized`` when known (k-fold reruns it)."""

    original: onnx.ModelProto
    optimized: onnx.ModelProto
    data: Dataset
    held_out: Dataset
    tolerance: Tolerance = field(default_factory=Tolerance.budget)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    labels: np.ndarray | None = None
    all_labels: np.ndarray | None = None
    pipeline: str | None = None
    seed: int = 0
    progress: Progress = NULL_PROGRESS
    _cache: dict[tuple[int, str], Outputs] = field(default_factory=dict, repr=False)
    named_kinds: Mapping[str, OutputKind | str] = field(default_factory=dict)
    kinds: Mapping[str, OutputKind] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # how each output is judged: read from the original's graph, or as the user named it
        self.kinds = output_kinds(self.original, self.named_kinds)

    def outputs(self, which: str, dataset: Dataset | None = None, runtime: RuntimeConfig | None = None,
                key: str = "") -> Outputs:
        """Outputs of the ``original`` or ``optimized`` model on ``dataset`` (default: held-out), cached under
        ``key`` when one is given (the clean held-out outputs are read by most sections)."""
        cache_key = (id(self.original) if which == "original" else id(self.optimized), key)
        if key and cache_key in self._cache:
            return self._cache[cache_key]
        model = self.original if which == "original" else self.optimized
        runtime = runtime or self.runtime
        session = create_session(model, runtime)
        outputs, _ = run_dataset(session, dataset or self.held_out, runtime, progress=self.progress,
                                 label=f"{which} {key or 'outputs'}")
        if key:
            self._cache[cache_key] = outputs
        return outputs

    def reference(self) -> Outputs:
        """The original model's outputs on the held-out samples under the configured runtime."""
        return self.outputs("original", key="held-out")

    def candidate(self) -> Outputs:
        """The optimised model's outputs on the held-out samples under the configured runtime."""
        return self.outputs("optimized", key="held-out")
