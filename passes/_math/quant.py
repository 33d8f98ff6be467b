"""Int8 quantization maths for QDQ passes: grids, (de)quantization, int32 biases, range observers and estimators.

The affine grid is ONNX's ``q = saturate(round(x / scale) + zero_point)``, round half to even. Every range includes
0 so that zero, the value of padding and of many ReLU outputs, is exactly representable. Signed grids are
symmetric, ``[-(2^(b-1)-1), 2^(b-1)-1]``: -128 is dropped so that ±x quantize alike, as symmetric int8 weights expect;
``bits`` < 8 narrows the grid inside the 8-bit type (7-bit weights leave int8 dot products headroom on hardware
that sums pairs of products in int16). A range with no extent (all zeros, no finite value seen, or too narrow for a
normal float32 scale) gets scale 1.0, not a tiny one: any scale is exact for zeros, and 1.0 keeps the bias scale
``s_in·s_w`` far from float32 underflow.

Calibration streams: observers reduce each batch at once and keep O(1) (min/max) or O(bins) (histogram) state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "METHODS",
    "HistogramObserver",
    "MinMaxObserver",
    "QuantParams",
    "activation_params",
    "bias_int32",
    "dequantize",
    "estimate_range",
    "fake_quantize",
    "quantize",
    "sqnr_db",
    "weight_params",
]

Array = NDArray[np.float64]
METHODS = ("minmax", "mean-minmax", "percentile", "mse")
_MIN_SCALE = float(np.finfo(np.float32).tiny)
_MIN_NORMAL = float(np.finfo(np.float64).tiny)
_INT32_MAX = 2**31 - 1


def _qrange(signed: bool, bits: int) -> tuple[int, int]:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {ndim} dimensions")
    return axis % ndim


@dataclass(frozen=True)
class QuantParams:
    """An int8 or uint8 grid: ``scale`` and ``zero_point`` are 0-d (per tensor, ``axis`` None) or 1-d along ``axis``.

    The zero point's dtype picks the ONNX type; ``bits`` narrows the levels used inside it (see the module notes).
    """

    scale: NDArray[np.float32]
    zero_point: NDArray[np.uint8] | NDArray[np.int8]
    axis: int | None = None
    bits: int = 8

    def __post_init__(self) -> None:
        if self.zero_point.dtype not in (np.uint8, np.int8) or self.scale.dtype != np.float32:
            raise ValueError(f"need float32 scale and uint8/int8 zero point, got {self.scale.dtype}, "
                             f"{self.zero_point.dtype}")
        if self.scale.shape != self.zero_point.shape or self.scale.ndim != (0 if self.axis is None else 1):
            raise ValueError(f"scale {self.scale.shape} and zero point {self.zero_point.shape} do not fit axis "
                             f"{self.axis}")
        if not (np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ValueError("scales must be finite and positive")
        if ((self.zero_point < self.qmin) | (self.zero_point > self.qmax)).any():
            raise ValueError(f"zero point outside [{self.qmin}, {self.qmax}]")

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype

    @property
    def qmin(self) -> int:
        return _qrange(self.dtype == np.int8, self.bits)[0]

    @property
    def qmax(self) -> int:
        return _qrange(self.dtype == np.int8, self.bits)[1]


def _grid(low: Array, high: Array, signed: bool, symmetric: bool, bits: int) -> tuple[Array, Array]:
    """Scale (float32 values) and zero point of the grid for ranges ``low ≤ 0 ≤ high``, elementwise, in float64.

    Symmetric grids centre the zero point (0, or 2^(b-1) for unsigned) and fit ``max(-low, high)`` on the shorter
    side; asymmetric ones spread ``high - low`` over all levels and round the zero point, so 0 stays exact.
    """
    qmin, qmax = _qrange(signed, bits)
    middle = (qmin + qmax + 1) // 2
    with np.errstate(over="ignore", invalid="ignore"):
        if symmetric:
            scale = np.maximum(-low, high) / min(middle - qmin, qmax - middle)
        else:
            scale = (high - low) / (qmax - qmin)
        scale = np.asarray(scale, np.float32).astype(np.float64)
    scale = np.where(np.isfinite(scale) & (scale >= _MIN_SCALE), scale, 1.0)
    zero = np.full_like(scale, middle) if symmetric else np.clip(np.rint(qmin - low / scale), qmin, qmax)
    return scale, zero


def _params(scale: Array, zero: Array, axis: int | None, signed: bool, bits: int) -> QuantParams:
    return QuantParams(scale.astype(np.float32), zero.astype(np.int8 if signed else np.uint8), axis, bits)


def activation_params(
    low: float, high: float, *, signed: bool = False, symmetric: bool | None = None, bits: int = 8
) -> QuantParams:
    """Per-tensor grid covering ``[min(low, 0), max(high, 0)]``: uint8 asymmetric, or int8 symmetric if ``signed``.

    A bound that is not finite counts as 0 (an observer that saw no finite value reports ``(inf, -inf)``).
    """
    lo, hi = (float(v) if math.isfinite(v) else 0.0 for v in (low, high))
    if lo > hi:
        raise ValueError(f"empty range [{lo:g}, {hi:g}]")
    symmetric = signed if symmetric is None else symmetric
    scale, zero = _grid(np.array(min(lo, 0.0)), np.array(max(hi, 0.0)), signed, symmetric, bits)
    return _params(scale, zero, None, signed, bits)


def weight_params(weight: ArrayLike, axis: int | None, *, bits: int = 8) -> QuantParams:
    """Symmetric int8 grid for ``weight``: per channel along ``axis`` (max |w| over the other axes), or per tensor.

    All-zero channels get scale 1.0. The stored axis is non-negative.
    """
    w = np.abs(np.asarray(weight, np.float64))
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite")
    if axis is not None:
        axis = _axis(axis, w.ndim)
    others = None if axis is None else tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(w, axis=others, initial=0.0)
    scale, zero = _grid(-amax, amax, True, True, bits)
    return _params(scale, zero, axis, True, bits)


def _along(params: QuantParams, shape: tuple[int, ...]) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    scale, zero = params.scale, params.zero_point.astype(np.int32)
    if params.axis is None:
        return scale, zero
    axis = _axis(params.axis, len(shape))
    if shape[axis] != scale.size:
        raise ValueError(f"{scale.size} channels in the params, {shape[axis]} on axis {axis} of {shape}")
    view = [1] * len(shape)
    view[axis] = -1
    return scale.reshape(view), zero.reshape(view)


def quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.uint8] | NDArray[np.int8]:
    """``clip(round(x / scale) + zero_point, qmin, qmax)`` in float32 as QuantizeLinear, but clipped to the narrowed
    grid of ``params.bits``; NaN maps to the zero point."""
    x32 = np.asarray(x, np.float32)
    scale, zero = _along(params, x32.shape)
    with np.errstate(over="ignore"):
        steps = np.nan_to_num(x32 / scale, nan=0.0)
    return np.clip(np.rint(steps) + zero, params.qmin, params.qmax).astype(params.dtype)


def dequantize(q: ArrayLike, params: QuantParams) -> NDArray[np.float32]:
    """``(q - zero_point) · scale`` in float32, as DequantizeLinear."""
    qi = np.asarray(q).astype(np.int32)
    scale, zero = _along(params, qi.shape)
    return (qi - zero).astype(np.float32) * scale


def fake_quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.float32]:
    """What a QuantizeLinear → DequantizeLinear pair computes on ``x``: ``dequantize(quantize(x))``, in float32 in
    place (its integers are exact in float32; calibration runs it on every activation batch)."""
    x32 = np.asarray(x, np.float32)
    scale, zero = _along(params, x32.shape)
    zero32 = zero.astype(np.float32)
    y = np.empty(x32.shape, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.divide(x32, scale, out=y)
    np.rint(y, out=y)
    y += zero32
    np.clip(y, params.qmin, params.qmax, out=y)
    nan = np.isnan(y)
    if nan.any():
        np.copyto(y, np.broadcast_to(zero32, y.shape), where=nan)
    y -= zero32
    y *= scale
    return y


def bias_int32(
    bias: ArrayLike, input_scale: float, weight_scale: ArrayLike
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The int32 bias ``round(b / (s_in·s_w))`` and its scale ``s_in·s_w`` (float32, zero point 0), as QLinearConv
    and QGemm accumulate it; raises ValueError when a value would not fit in ±(2^31-1), so the caller keeps it float.
    """
    scale = np.float32(input_scale) * np.asarray(weight_scale, np.float32)
    b = np.asarray(bias, np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("bias scale s_in·s_w must be finite and positive")
    if not np.isfinite(b).all() or (scale.ndim == 1 and b.shape != scale.shape):
        raise ValueError(f"bias {b.shape} must be finite and match the weight scales {scale.shape}")
    q = np.rint(b / scale.astype(np.float64))
    if np.abs(q).max(initial=0.0) > _INT32_MAX:
        raise ValueError(f"bias up to {np.abs(b).max():g} at scale {scale.min():g} overflows int32")
    return q.astype(np.int32), scale


def sqnr_db(reference: ArrayLike, approx: ArrayLike) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σref² / Σ(ref - approx)²)`` in float64; inf when exact."""
    r, a = np.asarray(reference, np.float64), np.asarray(approx, np.float64)
    if r.shape != a.shape:
        raise ValueError(f"shapes differ: {r.shape} and {a.shape}")
    noise, signal = float(np.sum((r - a) ** 2)), float(np.sum(r**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


_CHUNK = 1 << 16
"""Values a histogram bins at a time: each step's float64 quotients and bin numbers stay in the CPU's cache."""
_NO_UNDERFLOW_32 = float(np.finfo(np.float32).smallest_subnormal) / 5e-324 / 2
"""Below this width, no nonzero float32 value's float64 quotient underflows to ±0.0 (the case ``_offsets`` mends)."""


@dataclass(frozen=True)
class _Finite:
    values: NDArray[np.floating]
    """The finite values, flat, as float32 when given as float32 (binned in float64 all the same), else float64."""
    ignored: int
    low: float
    high: float


def _finite(x: ArrayLike) -> _Finite:
    """The finite values of ``x`` and their extremes. A copy is made only when some value is not finite (or the
    type is neither float32 nor float64): NaN propagates through min and max, so finite extremes mean all are."""
    values = np.asarray(x)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    values = values.ravel()
    if values.size == 0:
        return _Finite(values, 0, math.inf, -math.inf)
    low, high = float(values.min()), float(values.max())
    if math.isfinite(low) and math.isfinite(high):
        return _Finite(values, 0, low, high)
    keep = np.isfinite(values)
    values = values[keep]
    ignored = int(keep.size - values.size)
    if values.size == 0:
        return _Finite(values, ignored, math.inf, -math.inf)
    return _Finite(values, ignored, float(values.min()), float(values.max()))


class MinMaxObserver:
    """Running min/max and the mean of per-batch min/max ("mean-minmax"), over finite values only.

    NaN and ±Inf are counted in ``ignored`` and otherwise skipped: one Inf would make every scale useless. Batches
    without a finite value do not count in ``batches``. With nothing seen, ``low`` is +inf and ``high`` -inf.
    """

    def __init__(self) -> None:
        self.low, self.high = math.inf, -math.inf
        self.count = self.batches = self.ignored = 0
        self._low_sum = self._high_sum = 0.0

    def update(self, x: ArrayLike) -> None:
        finite = _finite(x)
        self.ignored += finite.ignored
        if finite.values.size == 0:
            return
        low, high = finite.low, finite.high
        self.low, self.high = min(self.low, low), max(self.high, high)
        self.count += finite.values.size
        self.batches += 1
        self._low_sum += low
        self._high_sum += high

    @property
    def batch_low_mean(self) -> float:
        return self._mean(self._low_sum) if self.batches else math.inf

    @property
    def batch_high_mean(self) -> float:
        return self._mean(self._high_sum) if self.batches else -math.inf

    def _mean(self, total: float) -> float:
        """``total / batches``, kept in ``[low, high]``, where the mean of per-batch extremes lies but for rounding."""
        return min(max(total / self.batches, self.low), self.high)


def _offsets(values: Array, width: float) -> Array:
    """Bin of each value counted from the bin left of which 0 lies: ``floor(v / width)``, but at most -1 when v < 0.

    A negative value whose quotient underflows to -0.0 would otherwise land right of 0. The result stays float, as
    the quotient of a value far outside the grid may pass int64 (or be inf when ``width`` is tiny); the histogram
    decides where a value goes, and whether a grid covers a range, with this one function only.
    """
    with np.errstate(over="ignore", under="ignore"):
        steps = np.floor(values / width)
    return np.where(values < 0, np.minimum(steps, -1.0), steps)


def _first_grid(low: float, high: float, bins: int) -> tuple[float, int]:
    """Width and zero bin of ``bins`` bins over ``[low ≤ 0 ≤ high]``, ``low < high``, by the rule ``_offsets`` reads.

    The width is ``(high - low) / (bins - 1)`` plus 2^-48 relative slack and at least float64's smallest normal
    number. In exact arithmetic ``ceil(-low / w) + floor(high / w) ≤ bins - 1``; each quotient is rounded once and
    the width a few times, at most a few 2^-53 relative, and the slack outweighs them, so ``low`` falls in bin 0 or
    later and ``high`` in bin ``bins - 1`` or earlier (``update`` checks it like any batch, with ``_offsets``).
    """
    m = bins - 1
    width = max(high / m - low / m, _MIN_NORMAL) * (1.0 + 2.0**-48)  # two quotients: no overflow in high - low
    if not math.isfinite(width):
        raise OverflowError(f"{bins} bins over [{low:g}, {high:g}] need a width past float64's range")
    return width, int(-_offsets(np.array([low]), width)[0])


class HistogramObserver:
    """Counts of finite values in ``bins`` equal bins of ``width``, with 0 the left edge of bin ``zero_bin``.

    The bins always cover 0 and every value seen: value v is counted in bin ``zero_bin + floor(v / width)``, the
    quotient rounded as float64 (so a value within rounding of an edge may sit on either side of it), and before a
    batch is counted its min and max are checked to fall inside the grid by that same rule. When a batch falls
    outside, the width doubles (k times) and the grid stays anchored at 0, so each old bin nests in exactly one new
    bin and the counts merge exactly: the only approximation is the coarser resolution, and reading a value inside a
    bin assumes the values spread evenly in it. Until a nonzero value comes, ``width`` is 0 and zeros count in bin 0.
    Exact ``low``/``high``, the count of exact zeros and of ignored NaN/Inf are kept too. Memory is O(bins).
    ``update`` raises OverflowError, before changing anything, only for values so near float64's max that
    ``bins`` bins cannot span them.
    """

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2:
            raise ValueError(f"need at least 2 bins, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.width = 0.0
        self.zero_bin = 0
        self.low, self.high = math.inf, -math.inf
        self.count = self.zeros = self.ignored = 0

    @property
    def edges(self) -> Array:
        return (np.arange(self.bins + 1) - self.zero_bin) * np.float64(self.width)

    def update(self, x: ArrayLike) -> None:
        finite = _finite(x)
        values, ignored = finite.values, finite.ignored
        if values.size:
            smallest, largest = finite.low, finite.high
            low, high = min(smallest, 0.0), max(largest, 0.0)
            if self.width == 0.0 and high > low:
                self._start(low, high)
            if self.width > 0.0 and not self._covers(low, high):
                self._widen(low, high)
            self._count(values)
            self.low, self.high = min(self.low, smallest), max(self.high, largest)
            self.count += values.size
            self.zeros += int(np.count_nonzero(values == 0))
        self.ignored += ignored

    def _start(self, low: float, high: float) -> None:
        """The first grid, for the first batch with a nonzero value; the zeros seen before move to its zero bin."""
        width, zero = _first_grid(low, high, self.bins)
        pending, self.counts[0] = self.counts[0], 0
        self.counts[zero] += pending
        self.width, self.zero_bin = width, zero

    def _covers(self, low: float, high: float) -> bool:
        first, last = _offsets(np.array([low, high]), self.width) + self.zero_bin
        return bool(first >= 0 and last < self.bins)

    def _count(self, values: NDArray[np.floating]) -> None:
        if self.width == 0.0:  # only zeros so far
            self.counts[0] += values.size
            return
        # floor(v / width) is _offsets' rule whenever no quotient can underflow to -0.0 (float32 values, sane widths)
        plain = values.dtype == np.float32 and self.width < _NO_UNDERFLOW_32
        steps, index = np.empty(min(values.size, _CHUNK)), np.empty(min(values.size, _CHUNK), np.intp)
        for start in range(0, values.size, _CHUNK):
            part = values[start:start + _CHUNK]
            n = part.size
            if plain:
                np.floor(np.divide(part, self.width, out=steps[:n], dtype=np.float64), out=steps[:n])
            else:
                steps[:n] = _offsets(np.asarray(part, np.float64), self.width)  # float64 parts are not copied
            index[:n] = steps[:n]
            index[:n] += self.zero_bin  # in [0, bins): the grid covers them
            self.counts += np.bincount(index[:n], minlength=self.bins)

    def _widen(self, low: float, high: float) -> None:
        """Double the width until old bins and ``[low, high]`` fit, choosing the fewest bins below zero.

        ``math.ldexp`` scales exactly (and raises OverflowError past float64's max); quotients may be inf at first,
        so the fit is decided on floats, whose integer values are exact while they matter (below ``bins``).
        A fit needs ``last - first < n``, so ``max(-low, high) / width < 2n`` even after rounding: the search skips
        the doublings that leave the width below ``max(-low, high) / 2n``, so it takes a few steps however far the
        range jumps (logarithms, as ``2n · width`` may overflow).
        """
        n, zero = self.bins, self.zero_bin
        k = max(0, math.floor(math.log2(max(-low, high)) - math.log2(2 * n) - math.log2(self.width)) - 1)
        while True:
            k += 1
            group, width = min(2**k, n), math.ldexp(self.width, k)
            first, last = _offsets(np.array([low, high]), width)
            new_zero = max(-(-zero // group), -first)
            if new_zero + (n - 1 - zero) // group < n and new_zero + last < n:
                break
        merged = np.zeros(n, np.int64)
        np.add.at(merged, int(new_zero) + (np.arange(n) - zero) // group, self.counts)
        self.counts, self.width, self.zero_bin = merged, width, int(new_zero)

    def percentile(self, q: float) -> float:
        """numpy's ``percentile(values, q)`` read off the histogram: the value of 0-based rank ``q/100·(count-1)``.

        Value k owns ``[k, k+1)`` of the cumulative count, and a bin's values spread evenly across it, except exact
        zeros, which sit at 0, the left edge of ``zero_bin``. The answer is clamped to ``[low, high]``, and the ends,
        ``q`` 0 and 100, are the exact ``low`` and ``high``: where in its bin the largest value lies is not known.
        """
        if self.count == 0 or not 0 <= q <= 100:
            raise ValueError(f"percentile {q} of {self.count} values")
        if q in (0, 100):
            return self.low if q == 0 else self.high
        if self.width == 0.0:
            return 0.0
        target = q / 100 * (self.count - 1) + 0.5
        cumulative = np.cumsum(self.counts)
        b = min(int(np.searchsorted(cumulative, target, side="left")), self.bins - 1)
        spread, rank = int(self.counts[b]), target - float(cumulative[b] - self.counts[b])
        if b == self.zero_bin:
            if rank <= self.zeros:
                return 0.0
            spread, rank = spread - self.zeros, rank - self.zeros
        fraction = rank / spread if spread else 0.0
        return float(np.clip((b - self.zero_bin + fraction) * self.width, self.low, self.high))


def _expected_errors(lows: Array, highs: Array, histogram: HistogramObserver, signed: bool, bits: int) -> Array:
    """Expected squared error of each candidate grid over the histogram: clipping error at bin centres plus
    ``scale²/12`` per in-range value; exact zeros cost nothing. Prefix sums make each candidate O(log bins)."""
    h = histogram
    centres = (np.arange(h.bins) - h.zero_bin + 0.5) * h.width
    counts = h.counts.astype(np.float64)
    counts[h.zero_bin] -= h.zeros
    s0, s1, s2 = (np.concatenate(([0.0], np.cumsum(counts * centres**p))) for p in range(3))
    scale, zero = _grid(lows, highs, signed, signed, bits)
    qmin, qmax = _qrange(signed, bits)
    bottom, top = (qmin - zero) * scale, (qmax - zero) * scale
    i, j = np.searchsorted(centres, bottom, side="left"), np.searchsorted(centres, top, side="right")
    below = s2[i] - 2 * bottom * s1[i] + bottom**2 * s0[i]
    above = (s2[-1] - s2[j]) - 2 * top * (s1[-1] - s1[j]) + top**2 * (s0[-1] - s0[j])
    return np.asarray(below + above + scale**2 / 12 * (s0[j] - s0[i]), np.float64)


def _mse_range(histogram: HistogramObserver, signed: bool, bits: int) -> tuple[float, float]:
    """Search clip ends at 200 geometric fractions (1/256 … 1) of each side of the data, independently."""
    low, high = min(histogram.low, 0.0), max(histogram.high, 0.0)
    if histogram.width == 0.0:
        return 0.0, 0.0
    fractions = np.geomspace(1 / 256, 1.0, 200)
    if signed:
        highs = max(-low, high) * fractions
        lows = -highs
    else:
        lows, highs = (a.ravel() for a in np.meshgrid(np.unique(low * fractions), np.unique(high * fractions)))
    best = int(np.argmin(_expected_errors(lows, highs, histogram, signed, bits)))
    return float(lows[best]), float(highs[best])


def estimate_range(
    minmax: MinMaxObserver,
    histogram: HistogramObserver | None,
    method: str,
    *,
    percentile: float = 99.99,
    signed: bool = False,
    bits: int = 8,
) -> tuple[float, float]:
    """A calibration range ``(low ≤ 0 ≤ high)`` by ``method`` (one of ``METHODS``); ``(0, 0)`` if nothing was seen.

    "percentile" clips ``100 - p`` % on each side; "mse" minimises the expected squared error of the grid that
    ``activation_params(low, high, signed=signed, bits=bits)`` builds (uint8 asymmetric, or int8 symmetric).
    Both need the histogram. With ``signed`` the "mse" range is symmetric, as the grid.
    """
    if method not in METHODS:
        raise ValueError(f"unknown range method {method!r}; choose from {', '.join(METHODS)}")
    if method in ("minmax", "mean-minmax"):
        if minmax.count == 0:
            return 0.0, 0.0
        means = (minmax.batch_low_mean, minmax.batch_high_mean)
        low, high = (minmax.low, minmax.high) if method == "minmax" else means
    elif histogram is None:
        raise ValueError(f"range method {method!r} needs a histogram")
    elif histogram.count == 0:
        return 0.0, 0.0
    elif method == "percentile":
        if not 50 <= percentile <= 100:
            raise ValueError(f"percentile must be in [50, 100], got {percentile}")
        low, high = histogram.percentile(100 - percentile), histogram.percentile(percentile)
    else:
        low, high = _mse_range(histogram, signed, bits)
    return min(low, 0.0), max(high, 0.0)
