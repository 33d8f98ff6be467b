"""Model outputs over a dataset, as the verifier and the validation sections compare them (numpy only).

An output whose shape depends on the sample (``NonZero``, ``Unique``, ``Compress``, ``NonMaxSuppression``, ``TopK``
with a data-dependent k…) cannot be stacked into one array: it is a ``RaggedOutput``, one array per sample, and
``graphopt.verify.metrics`` compares it sample by sample. An output too large to hold for every sample may be
``Rows`` of a temporary file (``graphopt.columns.SpillFile``), which the metrics read a block of samples at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from graphopt.columns import Joined, Rows

__all__ = ["Output", "Outputs", "RaggedOutput", "in_memory", "join_samples", "stack_samples", "take_samples"]


@dataclass(frozen=True, eq=False)
class RaggedOutput:
    """One output over the samples when its shape differs between them: ``samples[i]`` is sample ``i``'s array,
    laid out as ``array[i]`` would be had the samples stacked (a batch's slice, or a whole per-sample output).

    All samples share one dtype; there is no sample axis, so there is no ``shape`` (see ``shapes``).
    """

    samples: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a ragged output holds at least one sample")
        if len({a.dtype for a in self.samples}) > 1:
            dtypes = sorted({str(a.dtype) for a in self.samples})
            raise ValueError(f"the samples of a ragged output share one dtype, not {', '.join(dtypes)}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.samples[0].dtype

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(a.shape for a in self.samples)

    def take(self, indices: Sequence[int] | np.ndarray) -> RaggedOutput:
        """The samples at ``indices``, in that order (as ``array[indices]`` on a stacked output)."""
        return RaggedOutput(tuple(self.samples[int(i)] for i in indices))


Output: TypeAlias = np.ndarray | Rows | RaggedOutput
"""One output over a dataset: an array (axis 0 = samples), ``Rows`` of one kept on disk, or a ``RaggedOutput`` when
the shape varies by sample."""

Outputs: TypeAlias = Mapping[str, Output]
"""Model outputs over a dataset, by output name (``run_dataset`` returns a dict)."""


def stack_samples(parts: Sequence[np.ndarray]) -> Output:
    """Per-sample arrays stacked on a new axis 0, or a ``RaggedOutput`` when their shapes differ."""
    if len({a.shape for a in parts}) > 1:
        return RaggedOutput(tuple(parts))
    return np.stack(parts)


def take_samples(output: Output, window: slice) -> Output:
    """The samples of ``output`` in ``window`` (a view of an array's rows, unread rows of a file's)."""
    if isinstance(output, RaggedOutput):
        return RaggedOutput(output.samples[window])
    if isinstance(output, Rows):
        return output.select(window)
    return output[window]


def join_samples(parts: Sequence[Output]) -> Output:
    """Outputs of consecutive sample ranges as one output: arrays concatenated on axis 0 when their samples share a
    shape (``Rows`` of the parts, uncopied, when any part is on disk), else a ``RaggedOutput`` of every sample."""
    stacked = [p for p in parts if not isinstance(p, RaggedOutput)]
    if len(stacked) < len(parts) or len({p.shape[1:] for p in stacked}) > 1:
        return RaggedOutput(tuple(s for p in parts for s in (p.samples if isinstance(p, RaggedOutput) else
                                                              list(np.asarray(p)))))
    if not any(isinstance(p, Rows) for p in stacked):
        return np.concatenate(stacked, axis=0)
    return Rows(Joined(stacked))


def in_memory(outputs: Outputs) -> dict[str, np.ndarray | RaggedOutput]:
    """``outputs`` with every output on disk read whole: for code that needs arrays (a user's task metric)."""
    return {name: np.asarray(o) if isinstance(o, Rows) else o for name, o in outputs.items()}
