"""Whether values survive IEEE half precision: range (overflow beyond 65504), underflow and relative rounding loss.

float16 has 10 mantissa bits (relative rounding error at most 2⁻¹¹ ≈ 4.9e-4 for normal numbers), a largest finite
value of 65504 and a smallest subnormal of 2⁻²⁴ ≈ 6e-8: anything larger becomes ±inf, anything below half of that
becomes 0, and values under 2⁻¹⁴ keep fewer mantissa bits. A weight is stored in float16 only when it neither
overflows nor loses more than a relative bound; an activation is computed in float16 only when its observed range on
calibration data, times a safety margin, stays below 65504. ``RangeStats`` reduces activations batch by batch so
calibration memory does not grow with the sample count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FP16_MAX",
    "FP16_NORMAL_MIN",
    "FP16_SUBNORMAL_MIN",
    "RangeStats",
    "overflows",
    "range_reason",
    "relative_loss",
    "storage_reason",
    "to_float16",
    "underflow_share",
]

FP16_MAX = 65504.0
FP16_NORMAL_MIN = 2.0**-14
FP16_SUBNORMAL_MIN = 2.0**-24


def to_float16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to float16 (round to nearest even), without numpy's overflow warning."""
    with np.errstate(over="ignore"):
        return np.asarray(values).astype(np.float16)


def overflows(values: np.ndarray, margin: float = 1.0) -> bool:
    """Whether a finite value's magnitude times ``margin`` exceeds float16's largest finite value."""
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return bool(finite.size and finite.max() * margin > FP16_MAX)


def underflow_share(values: np.ndarray) -> float:
    """The share of non-zero values that float16 flushes to zero."""
    v = np.asarray(values, dtype=np.float64)
    nonzero = np.count_nonzero(v)
    if not nonzero:
        return 0.0
    return float(np.count_nonzero((v != 0) & (to_float16(v) == 0)) / nonzero)


def relative_loss(values: np.ndarray) -> float:
    """‖x − fp16(x)‖ / ‖x‖ in float64 over the finite values (0 for an all-zero array, inf on overflow)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        return 0.0
    rounded = to_float16(v).astype(np.float64)
    if not np.all(np.isfinite(rounded)):
        return float("inf")
    return float(np.linalg.norm(v - rounded) / norm)


def storage_reason(values: np.ndarray, max_loss: float) -> str:
    """Why ``values`` cannot be stored as float16 (overflow, or a relative loss above ``max_loss``), or ``""``."""
    if overflows(values):
        return f"values up to {float(np.nanmax(np.abs(values))):.3g} overflow float16 (max {FP16_MAX:g})"
    loss = relative_loss(values)
    if loss > max_loss:
        return (f"relative float16 rounding loss {loss:.2e} > {max_loss:g} ({underflow_share(values):.0%} of the "
                "non-zero values underflow)")
    return ""


@dataclass
class RangeStats:
    """Running statistics of one tensor over calibration batches: largest finite magnitude, squared float16
    rounding error and squared norm (for the relative loss), and whether a non-finite value was seen."""

    max_abs: float = 0.0
    error2: float = 0.0
    norm2: float = 0.0
    nonfinite: bool = False

    def update(self, batch: np.ndarray) -> None:
        """Fold one batch in; float32 arithmetic (a float32 value minus its float16 rounding is exact in float32)."""
        v = np.asarray(batch, dtype=np.float32).reshape(-1)
        finite = np.isfinite(v)
        if not finite.all():
            self.nonfinite = True
            v = v[finite]
        if not v.size:
            return
        top = float(np.abs(v).max())
        self.max_abs = max(self.max_abs, top)
        if top == 0.0:
            return
        error = v - to_float16(v).astype(np.float32)
        error[~np.isfinite(error)] = 0.0
        scale = np.float32(1.0 / top)  # squares of values near float32's max would overflow
        self.error2 += float(np.dot(error * scale, error * scale)) * top * top
        self.norm2 += float(np.dot(v * scale, v * scale)) * top * top

    @property
    def loss(self) -> float:
        """Relative float16 rounding loss of everything observed (inf when some value overflows)."""
        if self.max_abs > FP16_MAX:
            return float("inf")
        return float(np.sqrt(self.error2 / self.norm2)) if self.norm2 > 0 else 0.0


def range_reason(stats: RangeStats, margin: float, max_loss: float) -> str:
    """Why an activation with these calibration statistics must stay float32, or ``""``.

    ``margin`` ≥ 1 is the head-room kept below 65504: unseen inputs may reach further than the calibration ones.
    """
    if stats.max_abs * margin > FP16_MAX:
        return (f"observed magnitude {stats.max_abs:.3g} × margin {margin:g} exceeds float16's max {FP16_MAX:g}")
    if stats.loss > max_loss:
        return f"relative float16 rounding loss {stats.loss:.2e} on calibration data > {max_loss:g}"
    return ""
