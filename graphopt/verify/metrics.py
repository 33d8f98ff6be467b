"""Pure float64 error metrics between a reference output and a candidate output (axis 0 = samples).

NaN rule: a NaN where the reference has a NaN, and an infinity equal to the reference's, count as exact matches;
any other non-finite value on either side is a ``nonfinite_mismatch`` and fails every tolerance. The remaining
metrics are computed over the positions where both sides are finite.

Layout: an output of one shape for every sample is an array or ``Rows`` of one on disk, compared a block of samples
at a time (``BLOCK_ELEMENTS``), whichever it is.

Shape rule: an output whose shape depends on the sample is a ``RaggedOutput`` (one array per sample) and is compared
sample by sample. A sample whose candidate shape differs from the reference's is a ``shape_mismatch`` and fails
every tolerance, as a non-finite mismatch does; the other metrics are computed over the samples whose shapes agree
(with none, they read as for an empty output: cosine 1, errors 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, TypeAlias, TypeGuard

import numpy as np

from graphopt.columns import Rows, chunks
from graphopt.outputs import Output, RaggedOutput
from graphopt.verify.intervals import lower_bound

__all__ = [
    "BLOCK_ELEMENTS",
    "HEURISTIC",
    "ClassAxis",
    "Comparison",
    "ErrorStats",
    "PerSample",
    "all_nonnegative",
    "comparable",
    "error_stats",
    "identical",
    "looks_like_classifier",
    "margin_losses",
    "per_sample_cosine",
    "per_sample_iou",
    "per_sample_top1",
    "shape_mismatches",
]

_MAX_CLASSES = 256

HEURISTIC: Final = "heuristic"
ClassAxis: TypeAlias = int | None | Literal["heuristic"]
"""Where an output's class scores lie: an axis of the output array (top-1 agreement judged at every other position,
per sample), ``None`` (no top-1), or ``HEURISTIC`` (``looks_like_classifier`` decides from the shape)."""


def looks_like_classifier(shape: tuple[int, ...]) -> bool:
    """Outputs of shape [samples, classes] with 2 to 256 classes are judged on top-1 agreement too.

    Wider rank-2 outputs are usually embeddings, where an argmax carries no meaning.
    """
    return len(shape) == 2 and 2 <= shape[1] <= _MAX_CLASSES


@dataclass(frozen=True)
class ErrorStats:
    """How far a candidate output is from the reference. ``exact`` outputs (integers, booleans) only count
    ``mismatches``. ``min_atol`` is the smallest absolute tolerance that passes together with ``rtol``.
    ``median_abs`` and ``p99_abs`` are of every absolute error up to ``KEPT_ERRORS`` positions, of evenly spaced
    ones beyond. ``shape_mismatches`` counts the samples whose shapes differ (ragged outputs); the other figures leave them out.
    ``cosine_low`` and ``top1_low`` are one-sided bootstrap lower bounds of the mean per-sample cosine and top-1
    agreement at ``confidence`` (``None`` when not asked for): what the figures are on fresh samples, at least.
    ``near_zero_samples`` counts the empty samples, judged by absolute error or by their mask instead of cosine
    (see ``_agreements``).
    ``iou`` (and its bound ``iou_low``) is the mean per-sample IoU of the masks where the output exceeds
    ``mask_threshold``, for probability maps (``None`` otherwise; see ``per_sample_iou``)."""

    n_samples: int
    exact: bool
    mismatches: int
    nonfinite_mismatch: int
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    min_atol: float
    rtol: float
    cosine: float
    cosine_min: float
    snr_db: float
    top1: float | None
    shape_mismatches: int = 0
    cosine_low: float | None = None
    top1_low: float | None = None
    confidence: float | None = None
    near_zero_samples: int = 0
    iou: float | None = None
    iou_low: float | None = None
    mask_threshold: float | None = None
    per_sample: PerSample | None = field(default=None, repr=False, compare=False)
    """The judged agreements of each compared sample, for sequential screening; not part of the report."""

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_sample"}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()} | {
            "snr_db": _finite_or_label(self.snr_db)
        }


@dataclass(frozen=True)
class PerSample:
    """Per compared sample, what ``ErrorStats`` averages: the agreement (cosine, or the empty-sample rule), the
    share of positions whose top-1 agrees (``None``: not class scores) and the mask IoU (``None``: not a map); and,
    with top-1, the mean share of the reference's top-1 margin the candidate gave up (``margin_losses``), which
    ranks candidates by how near they bring positions to flipping."""

    cosine: np.ndarray
    top1: np.ndarray | None = None
    iou: np.ndarray | None = None
    margin_loss: np.ndarray | None = None


def _finite_or_label(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


Stacked: TypeAlias = np.ndarray | Rows
"""An output of one shape for every sample: an array, or ``Rows`` of one on disk."""


def stacked(output: Output) -> TypeGuard[Stacked]:
    """Whether ``output`` has one shape for every sample (it is not ragged)."""
    return not isinstance(output, RaggedOutput)


def comparable(reference: Output, candidate: Output) -> bool:
    """Whether ``error_stats`` can compare the two: arrays of one shape, or (either side ragged) as many samples."""
    if stacked(reference) and stacked(candidate):
        return reference.shape == candidate.shape
    return _count(reference) == _count(candidate)


def shape_mismatches(reference: Output, candidate: Output) -> list[int]:
    """The samples whose candidate output is shaped differently from the reference's (``comparable`` outputs)."""
    if stacked(reference) and stacked(candidate):
        return []
    return [i for i, (r, g) in enumerate(zip(_samples(reference), _samples(candidate), strict=True))
            if r.shape != g.shape]


def error_stats(reference: Output, candidate: Output, rtol: float = 0.0,
                confidence: float | None = None, class_axis: ClassAxis = HEURISTIC,
                mask_threshold: float | None = None) -> ErrorStats:
    """Compare ``candidate`` with ``reference``: arrays of one shape (axis 0 = samples), or, when either is a
    ``RaggedOutput``, sample by sample over the samples whose shapes agree (the others are ``shape_mismatches``).
    With ``confidence``, the per-sample cosines, top-1 agreements and mask IoUs also give lower confidence bounds.
    Top-1 is judged along ``class_axis`` (see ``ClassAxis``): per sample, the share of positions whose argmax
    agrees. With ``mask_threshold`` (a probability map), the masks above it are compared by IoU, per sample."""
    if not comparable(reference, candidate):
        raise ValueError(f"{_layout(candidate)} differs from the reference {_layout(reference)}")
    if stacked(reference) and stacked(candidate):
        comparison = Comparison(reference, rtol, class_axis, mask_threshold)
        comparison.add(candidate)
        return comparison.stats(confidence)
    exact = not np.issubdtype(reference.dtype, np.inexact)
    axis = _class_axis(reference, class_axis)
    threshold = None if exact else mask_threshold
    samples = list(zip(_samples(reference), _samples(candidate), strict=True))
    pairs = [_finite_pair(r, g) for r, g in samples if r.shape == g.shape]
    ref = np.concatenate([r.ravel() for r, _, _ in pairs]) if pairs else np.zeros(0)
    got = np.concatenate([g.ravel() for _, g, _ in pairs]) if pairs else np.zeros(0)
    cosines, near_zero = _agreements([r.ravel() for r, _, _ in pairs], [g.ravel() for _, g, _ in pairs], threshold)
    top1 = np.array([_sample_agreement(r, g, axis) for r, g, _ in pairs]) if axis is not None else None
    ious = (np.array([_ious(r.reshape(1, -1), g.reshape(1, -1), threshold)[0] for r, g, _ in pairs])
            if threshold is not None else None)  # pairs hold finite arrays already
    dtype = np.result_type(reference.dtype, candidate.dtype)
    return _summary(len(samples), exact, _flat_totals(ref, got, rtol, dtype), cosines, near_zero, top1, ious,
                    sum(c for _, _, c in pairs), len(samples) - len(pairs), confidence, threshold)


def per_sample_cosine(reference: Output, candidate: Output, mask_threshold: float | None = None) -> np.ndarray:
    """The agreement of each sample (axis 0) as ``error_stats`` averages it: its cosine (non-finite positions count
    as zero), or for an empty sample 1/0 (see ``_agreements``); NaN for a sample whose shapes differ
    (``error_stats`` leaves it out)."""
    if not np.issubdtype(reference.dtype, np.inexact):
        mask_threshold = None
    if stacked(reference) and stacked(candidate):
        return _per_sample(reference, candidate, class_axis=None, mask_threshold=mask_threshold).cosine
    pairs = [(r, g) for r, g in zip(_samples(reference), _samples(candidate), strict=True)]
    same = [i for i, (r, g) in enumerate(pairs) if r.shape == g.shape]
    finite = [_finite_pair(*pairs[i])[:2] for i in same]
    values = np.full(len(pairs), math.nan)
    values[same] = _agreements([r.ravel() for r, _ in finite], [g.ravel() for _, g in finite], mask_threshold)[0]
    return values


def per_sample_top1(reference: Output, candidate: Output, class_axis: ClassAxis = HEURISTIC) -> np.ndarray | None:
    """Per sample, the share of positions where the candidate's argmax along the class axis equals the
    reference's (1.0 or 0.0 for a plain classifier), NaN where the sample's shapes differ; ``None`` when the output
    holds no class scores (a ragged reference never does)."""
    axis = _class_axis(reference, class_axis)
    if axis is None:
        return None
    if isinstance(candidate, RaggedOutput):
        return np.array([_sample_agreement(r, g, axis) if r.shape == g.shape else math.nan
                         for r, g in zip(_samples(reference), candidate.samples, strict=True)])
    return _per_sample(reference, candidate, class_axis=axis).top1


def per_sample_iou(reference: Output, candidate: Output, threshold: float | None) -> np.ndarray | None:
    """Per sample, the IoU of the masks where reference and candidate exceed ``threshold`` (1 where both masks
    are empty: an empty map kept empty), NaN where the sample's shapes differ; ``None`` without a threshold or for
    integer outputs."""
    if threshold is None or not np.issubdtype(reference.dtype, np.inexact):
        return None
    if stacked(reference) and stacked(candidate):
        return _per_sample(reference, candidate, class_axis=None, mask_threshold=threshold).iou
    return np.array([_sample_iou(r, g, threshold) if r.shape == g.shape else math.nan
                     for r, g in zip(_samples(reference), _samples(candidate), strict=True)])


def _per_sample(reference: Output, candidate: Output, class_axis: ClassAxis,
                mask_threshold: float | None = None) -> PerSample:
    """The per-sample agreements ``error_stats`` judges."""
    per_sample = error_stats(reference, candidate, class_axis=class_axis, mask_threshold=mask_threshold).per_sample
    assert per_sample is not None
    return per_sample


def _sample_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float:
    ref, got, _ = _finite_pair(reference, candidate)
    return float(_ious(ref.reshape(1, -1), got.reshape(1, -1), threshold)[0])


def _ious(ref: np.ndarray, got: np.ndarray, threshold: float) -> np.ndarray:
    """Per row of two [n, k] arrays, the IoU of the masks above ``threshold``; 1 where both masks are empty."""
    return _mask_rows(ref, got, threshold)[2]


def identical(a: Output, b: Output) -> bool:
    """Bit for bit the same: one layout, and equal shapes, dtypes and bytes (per sample when ragged)."""
    if isinstance(a, RaggedOutput) or isinstance(b, RaggedOutput):
        return (isinstance(a, RaggedOutput) and isinstance(b, RaggedOutput) and len(a) == len(b)
                and all(identical(x, y) for x, y in zip(a.samples, b.samples, strict=True)))
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.tobytes() == b.tobytes()
    return all(x.tobytes() == y.tobytes() for x, y in zip(chunks(_rows(a)), chunks(_rows(b)), strict=True))


def _class_axis(reference: Output, class_axis: ClassAxis) -> int | None:
    """The class axis of ``reference`` as a non-negative array axis (≥ 1: axis 0 holds the samples), or ``None``
    where top-1 is not judged: not class scores, integers, ragged, or a class axis of one class or out of range."""
    if not stacked(reference) or not np.issubdtype(reference.dtype, np.inexact):
        return None
    if class_axis == HEURISTIC:
        return 1 if _classifier_like(reference) else None
    if class_axis is None or not -reference.ndim < class_axis < reference.ndim:
        return None
    axis = class_axis % reference.ndim
    return axis if axis >= 1 and reference.shape[axis] >= 2 else None


def margin_losses(reference: np.ndarray, candidate: np.ndarray, axis: int, *,
                  logs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per sample (axis 0) of two finite arrays of one shape: the share of positions whose argmax along ``axis``
    agrees, and the mean share of the reference's top-1 margin the candidate gave up: at each position, the
    reference's top class c and runner-up d, ``clip((m − m') / m, 0, 1)`` for the reference's margin
    ``m = ref[c] − ref[d]`` and the candidate's ``m' = got[c] − got[d]``, 1 where the argmax changed, 0 at a tie
    kept (``logs``: margins of the logarithms, for probabilities, which are differences of logits). A continuous
    stand-in for top-1 flips: on a few dozen samples flips are rare events, while a margin given up moves with the
    perturbation that flips a position (on a CTC recogniser's 41 int8 layers, its ranking on 24 samples agreed with
    the flips on 90 others at Spearman 0.81, the cosine's at 0.70)."""
    top = np.argmax(reference, axis=axis)
    agree = top == np.argmax(candidate, axis=axis)
    first = np.expand_dims(top, axis)
    runner_up = np.expand_dims(np.argmax(_without(reference, first, axis), axis=axis), axis)
    ends = [np.take_along_axis(side, index, axis=axis).astype(np.float64) for side in (reference, candidate)
            for index in (first, runner_up)]
    if logs:
        ends = [np.log(np.maximum(end, np.finfo(np.float64).tiny)) for end in ends]
    margin, kept = ends[0] - ends[1], ends[2] - ends[3]
    given_up = np.divide(margin - kept, margin, out=np.zeros_like(margin), where=margin > 0)
    loss = np.where(np.expand_dims(agree, axis), np.clip(given_up, 0.0, 1.0), 1.0)
    return agree.reshape(len(agree), -1).mean(axis=1), loss.reshape(len(loss), -1).mean(axis=1)


def _without(scores: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """A copy of ``scores`` with −inf at ``index`` along ``axis``."""
    copy = np.array(scores)
    np.put_along_axis(copy, index, -np.inf, axis=axis)
    return copy


def _sample_agreement(reference: np.ndarray, candidate: np.ndarray, axis: int) -> float:
    """One sample's share of positions whose argmax along ``axis`` (an axis of the stacked layout) agrees."""
    return float(np.mean(np.argmax(reference, axis=axis - 1) == np.argmax(candidate, axis=axis - 1)))


def _classifier_like(reference: Output) -> TypeGuard[Stacked]:
    """A float array of shape [samples, classes] (``looks_like_classifier``), whose top-1 agreement is judged."""
    return (stacked(reference) and np.issubdtype(reference.dtype, np.inexact)
            and looks_like_classifier(reference.shape))


def _count(output: Output) -> int:
    return len(output) if isinstance(output, RaggedOutput) or output.ndim else 1


def _samples(output: Output) -> Sequence[np.ndarray]:
    """An output as one array per sample (``array[i]``)."""
    if isinstance(output, RaggedOutput):
        return output.samples
    return list(np.asarray(output)) if output.ndim else [np.asarray(output)]


def _rows(output: Stacked) -> Stacked:
    """A stacked output with a sample axis (a 0-d array as one sample)."""
    return output.reshape(1) if isinstance(output, np.ndarray) and output.ndim == 0 else output


def all_nonnegative(output: Stacked) -> bool:
    """Whether no value of a stacked output is below 0 (read a chunk at a time)."""
    return all(not block.size or float(np.min(block)) >= 0 for block in chunks(_rows(output)))


def _layout(output: Output) -> str:
    if isinstance(output, RaggedOutput):
        return f"ragged output of {len(output)} samples"
    return f"shape {output.shape}"


def _finite_pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Both sides in float64 with non-finite positions zeroed, and how many of those break the NaN rule."""
    return _finite_block(reference, candidate)[:3]


def _finite_block(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """``_finite_pair``, and whether every value was finite (nothing zeroed)."""
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a sum is finite only if every term is
        total = float(ref.sum()) + float(got.sum())
    if math.isfinite(total):  # the usual case: nothing to zero, no NaN rule to apply
        return ref, got, 0, True
    finite = np.isfinite(ref) & np.isfinite(got)
    if finite.all():
        return ref, got, 0, True
    matched_special = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    nonfinite = int(np.count_nonzero(~finite & ~matched_special))
    return np.where(finite, ref, 0.0), np.where(finite, got, 0.0), nonfinite, False


BLOCK_ELEMENTS = 1 << 18
"""Values compared at a time (whole samples, at least one): float64 copies and scratch of this many values stay small
and warm, where whole-output temporaries (tens of millions of values, several of them) cost more in page faults
than in arithmetic. From 1M to 256K values, a comparison's peak scratch fell from 42–53 MB to 14–17 MB, and its time
by 8–15%, on a CTC head's 90 × 40 × 6,625 scores, 5,000 classifier rows, 30 320×320 maps and 100 × 128 × 384
embeddings."""


KEPT_ERRORS = 1 << 20
"""The most absolute errors a comparison keeps for their median and 99th percentile: every one up to this many
positions, evenly spaced ones beyond (4 MiB at float32), so that a comparison's memory does not grow with the
samples (a 320×320 map on 5,000 samples has 512M positions). Selecting the percentiles among 4M kept errors took
30% of a comparison of PP-OCRv4 rec's 6,625-class outputs on 24 samples; a million spaced errors place a median and
a 99th percentile as well."""


@dataclass
class _Totals:
    """Sums and extremes over every compared position, gathered block by block from finite float64 values; the
    absolute errors at every ``stride``-th position are kept for their median and 99th percentile."""

    rtol: float
    abs_errors: np.ndarray
    stride: int = 1
    positions: int = 0
    filled: int = 0
    signal: float = 0.0
    noise: float = 0.0
    abs_sum: float = 0.0
    mismatches: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_atol: float = 0.0

    @classmethod
    def of_size(cls, size: int, rtol: float, dtype: np.dtype) -> _Totals:
        """Totals of ``size`` values of ``dtype``, whose absolute errors are kept at its precision: float32 for float32
        outputs and narrower (half the memory and time of float64, percentiles within float32 rounding)."""
        kept = np.float32 if np.issubdtype(dtype, np.inexact) and dtype.itemsize <= 4 else np.float64
        stride = max(1, -(-size // KEPT_ERRORS))
        return cls(rtol, np.empty(-(-size // stride), dtype=kept), stride)

    def add(self, diff: np.ndarray, scale: np.ndarray, work: np.ndarray, *, signal: float, max_abs: float) -> None:
        """One block: ``|candidate − reference|`` and ``|reference|`` (one shape; ``scale`` is overwritten), the
        block's sum of squared references and its largest ``diff``, which the caller has at hand; ``work`` is
        scratch of that size."""
        picked = diff.ravel()[(-self.positions) % self.stride::self.stride]
        self.abs_errors[self.filled:self.filled + picked.size] = picked
        self.filled += picked.size
        self.positions += diff.size
        self.abs_sum += float(diff.sum())
        self.mismatches += int(np.count_nonzero(diff))
        self.max_abs = max(self.max_abs, max_abs)
        self.signal += signal
        flat = diff.ravel()
        self.noise += float(flat @ flat)
        if self.rtol:
            slack = np.subtract(diff, scale * self.rtol)
            self.min_atol = max(self.min_atol, float(slack.max(initial=0.0)))
        np.maximum(scale, np.finfo(np.float32).tiny, out=scale)
        self.max_rel = max(self.max_rel, float(np.divide(diff, scale, out=work).max(initial=0.0)))

    def percentiles(self) -> tuple[float, float]:
        """The median and 99th percentile of the absolute errors (linear interpolation, as ``np.percentile``)."""
        values = self.abs_errors[:self.filled]
        if not values.size:
            return 0.0, 0.0
        positions = [q * (values.size - 1) for q in (0.5, 0.99)]
        neighbours = [(math.floor(p), min(math.floor(p) + 1, values.size - 1)) for p in positions]
        values.partition(sorted({i for pair in neighbours for i in pair}))  # in place: the copy is this object's own
        median, p99 = (values[low] + (p - low) * (values[high] - values[low])
                       for p, (low, high) in zip(positions, neighbours, strict=True))
        return float(median), float(p99)


class Comparison:
    """``error_stats`` of a stacked output against ``reference``, gathered as the candidate's samples come (``add``
    the next ones) and summed up at any point (``stats`` of the samples so far): a search screens a candidate on
    its first samples, and its full verdict goes on from there instead of comparing them again. Samples are
    compared in blocks of ``BLOCK_ELEMENTS`` values; what is kept per sample (a few numbers) and the spaced
    absolute errors (``KEPT_ERRORS``) are all that grows. ``nonnegative`` (``None``: read from ``reference``; a
    function: asked only where a class axis is judged) says whether the reference's scores are all ≥ 0,
    probabilities, whose top-1 margins are taken in log-scores."""

    def __init__(self, reference: Stacked, rtol: float = 0.0, class_axis: ClassAxis = HEURISTIC,
                 mask_threshold: float | None = None, nonnegative: bool | Callable[[], bool] | None = None) -> None:
        self.reference, self.rtol = _rows(reference), rtol
        self.exact = not np.issubdtype(reference.dtype, np.inexact)
        self.axis = _class_axis(reference, class_axis)
        self.threshold = None if self.exact else mask_threshold
        self.compared = 0
        n = self.reference.shape[0]
        self._dot, self._ref_squares, self._got_squares, self._peaks, self._errors = (np.zeros(n) for _ in range(5))
        self._top1: np.ndarray | None = np.zeros(n) if self.axis is not None else None
        self._margin: np.ndarray | None = np.zeros(n) if self.axis is not None else None
        if self.axis is not None:  # read only where top-1 is judged: a whole pass over the reference
            nonnegative = all_nonnegative(self.reference) if nonnegative is None else (
                nonnegative() if callable(nonnegative) else nonnegative)
        self._in_logs = self.axis is not None and bool(nonnegative)
        self._masks = (np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)) if self.threshold is not None else None
        self._nonfinite = 0
        self._totals: _Totals | None = None  # sized at the first samples, whose dtype sets the kept errors' precision

    def add(self, candidate: Stacked) -> None:
        """Compare the candidate's next ``len(candidate)`` samples with the reference's."""
        candidate = _rows(candidate)
        n, width = self.reference.shape[0], math.prod(self.reference.shape[1:])
        if candidate.shape[1:] != self.reference.shape[1:] or self.compared + len(candidate) > n:
            raise ValueError(f"samples {self.compared}… of shape {list(candidate.shape)} do not follow a reference "
                             f"of shape {list(self.reference.shape)}")
        if self._totals is None:
            dtype = np.result_type(self.reference.dtype, candidate.dtype)
            self._totals = _Totals.of_size(self.reference.size, self.rtol, dtype)
        step = max(1, BLOCK_ELEMENTS // max(width, 1))
        scratch = np.empty((2, min(step, len(candidate)), width))  # |difference| and work space, reused
        for start in range(0, len(candidate), step):
            block = slice(start, start + step)
            rows = slice(self.compared + start, self.compared + start + len(candidate[block]))
            self._add_block(self.reference[rows], candidate[block], rows, scratch, self._totals)
        self.compared += len(candidate)

    def _add_block(self, reference: np.ndarray, candidate: np.ndarray, rows: slice, scratch: np.ndarray,
                   totals: _Totals) -> None:
        ref, got, bad, finite = _finite_block(reference, candidate)
        self._nonfinite += bad
        if self._top1 is not None and self._margin is not None and self.axis is not None:
            sides = (reference, candidate) if finite else (ref, got)  # at the outputs' own precision where finite
            self._top1[rows], self._margin[rows] = margin_losses(*sides, self.axis, logs=self._in_logs)
        ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
        diff, work = scratch[0, :len(ref)], scratch[1, :len(ref)]
        np.abs(np.subtract(got, ref, out=diff), out=diff)
        self._dot[rows], self._ref_squares[rows] = _row_dots(ref, got), _row_dots(ref, ref)
        self._got_squares[rows] = _row_dots(got, got)
        self._errors[rows] = diff.max(axis=1, initial=0.0)
        if self._masks is not None and self.threshold is not None:
            for whole, part in zip(self._masks, _mask_rows(ref, got, self.threshold), strict=True):
                whole[rows] = part
        scale = np.abs(ref, out=work)
        self._peaks[rows] = scale.max(axis=1, initial=0.0)
        totals.add(diff, scale, got, signal=float(self._ref_squares[rows].sum()),  # got's copy is scratch from here
                   max_abs=float(self._errors[rows].max(initial=0.0)))

    def stats(self, confidence: float | None = None) -> ErrorStats:
        """The statistics of the samples compared so far (with ``confidence``, their lower bounds too)."""
        n = self.compared
        totals = self._totals or _Totals.of_size(0, self.rtol, self.reference.dtype)
        masks = tuple(m[:n] for m in self._masks) if self._masks is not None else None
        cosines, near_zero = _empty_rule(_cosines_from(self._dot[:n], self._ref_squares[:n], self._got_squares[:n]),
                                         self._peaks[:n], self._errors[:n], (masks[0], masks[1]) if masks else None)
        return _summary(n, self.exact, totals, cosines, near_zero, None if self._top1 is None else self._top1[:n],
                        masks[2] if masks else None, self._nonfinite, 0, confidence, self.threshold,
                        None if self._margin is None else self._margin[:n])


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two [n, k] arrays, their dot product: a batched matrix product, which BLAS computes without a
    product array (2–7× faster than multiplying, then summing, on rows of 214 to 265,000 values)."""
    return np.matmul(a[:, np.newaxis, :], b[:, :, np.newaxis])[:, 0, 0]


def _mask_rows(ref: np.ndarray, got: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of two [n, k] arrays: whether the reference's mask above ``threshold`` is empty, whether the
    candidate's is, and their IoU (1 where both are empty)."""
    a, b = ref > threshold, got > threshold
    union = np.count_nonzero(a | b, axis=1)
    inter = np.count_nonzero(a & b, axis=1)
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)
    return np.asarray(~a.any(axis=1)), np.asarray(~b.any(axis=1)), ious


def _summary(n: int, exact: bool, totals: _Totals, cosines: np.ndarray, near_zero: int, top1: np.ndarray | None,
             ious: np.ndarray | None, nonfinite: int, shape_mismatched: int, confidence: float | None,
             mask_threshold: float | None, margin_loss: np.ndarray | None = None) -> ErrorStats:
    """The statistics from the totals over every compared position and the per-sample agreements, top-1
    agreements (``None``: not class scores) and mask IoUs (``None``: not a probability map)."""
    def bound(values: np.ndarray | None) -> float | None:
        if confidence is None or values is None or exact:
            return None
        return lower_bound(values.astype(np.float64), confidence=confidence) if values.size else 1.0

    signal, noise = totals.signal, totals.noise
    snr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    median, p99 = totals.percentiles()
    return ErrorStats(
        n_samples=n,
        exact=exact,
        mismatches=totals.mismatches,
        nonfinite_mismatch=nonfinite,
        max_abs=totals.max_abs,
        mean_abs=totals.abs_sum / totals.positions if totals.positions else 0.0,
        median_abs=median,
        p99_abs=p99,
        max_rel=totals.max_rel,
        min_atol=totals.max_abs if totals.rtol == 0 else totals.min_atol,
        rtol=totals.rtol,
        cosine=float(cosines.mean()) if cosines.size else 1.0,
        cosine_min=float(cosines.min()) if cosines.size else 1.0,
        snr_db=snr,
        top1=None if top1 is None else (float(np.mean(top1)) if top1.size else 1.0),
        shape_mismatches=shape_mismatched,
        cosine_low=bound(cosines),
        top1_low=bound(top1),
        confidence=None if exact else confidence,
        near_zero_samples=near_zero,
        iou=None if ious is None else (float(np.mean(ious)) if ious.size else 1.0),
        iou_low=bound(ious),
        mask_threshold=None if ious is None else mask_threshold,
        per_sample=PerSample(cosines, top1, ious, margin_loss),
    )


def _flat_totals(ref: np.ndarray, got: np.ndarray, rtol: float, dtype: np.dtype) -> _Totals:
    """``_Totals`` of two finite float64 vectors (of outputs of ``dtype``), a block at a time."""
    totals = _Totals.of_size(ref.size, rtol, dtype)
    for start in range(0, ref.size, BLOCK_ELEMENTS):
        block = slice(start, start + BLOCK_ELEMENTS)
        diff, work = np.abs(got[block] - ref[block]), np.empty_like(ref[block])
        signal = float(ref[block] @ ref[block])
        totals.add(diff, np.abs(ref[block]), work, signal=signal, max_abs=float(diff.max(initial=0.0)))
    return totals


NEAR_ZERO = 1e-3
"""A sample whose reference peaks below this share of the output's range over all samples has no direction to
compare (a text detector's probability map on an image without text: ~1e-7 everywhere)."""

NEAR_ZERO_AGREEMENT = 1e-2
"""Such a sample agrees (scores 1, else 0) when the candidate is within this share of the output's range of it
everywhere: an empty map stays empty."""


def _agreements(ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                mask_threshold: float | None = None) -> tuple[np.ndarray, int]:
    """Per-sample agreement of finite float64 samples (two lists of vectors, a ragged output's; arrays go through
    ``_array_stats``): their cosine, except where the reference is empty (``_empty_rule``), and how many were."""
    cosines = np.array([_cosine(r, g) for r, g in zip(ref, got, strict=True)])
    if mask_threshold is not None:  # the masks decide: no peaks or errors to measure
        empties = (_mask_empty(ref, mask_threshold), _mask_empty(got, mask_threshold))
        return _empty_rule(cosines, np.zeros(0), np.zeros(0), empties)
    peaks = np.array([np.abs(r).max(initial=0.0) for r in ref])
    errors = np.array([np.abs(g - r).max(initial=0.0) for r, g in zip(ref, got, strict=True)])
    return _empty_rule(cosines, peaks, errors, None)


def _empty_rule(cosines: np.ndarray, peaks: np.ndarray, errors: np.ndarray,
                empties: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, int]:
    """The per-sample agreements from the cosines, and how many samples were empty.

    An empty sample has no direction to compare: two maps of 1e-7 that match to 1e-6 can be orthogonal, and so can
    two faint maps that both stay far below a detector's threshold. Of a probability map (``empties``: per sample,
    whether the reference's mask is empty and whether the candidate's is), a sample whose reference mask is empty
    agrees (1, else 0) when the candidate's mask stays empty too: the detector finds nothing on either side. Of any
    other output, a sample whose reference peaks below ``NEAR_ZERO`` of the output's range agrees when the
    candidate stays within ``NEAR_ZERO_AGREEMENT`` of the range of it everywhere (``errors``: per-sample max
    absolute error)."""
    if empties is not None:
        empty, stays_empty = empties
        return np.where(empty, stays_empty.astype(np.float64), cosines), int(empty.sum())
    scale = float(peaks.max(initial=0.0))
    near = peaks <= NEAR_ZERO * scale
    if scale == 0.0 or not near.any():  # an all-zero reference has no range to judge against: cosines stand
        return cosines, 0
    return np.where(near, (errors <= NEAR_ZERO_AGREEMENT * scale).astype(np.float64), cosines), int(near.sum())


def _mask_empty(side: Sequence[np.ndarray], threshold: float) -> np.ndarray:
    """Per sample (a list of vectors), whether nothing exceeds ``threshold``."""
    return np.array([not np.any(sample > threshold) for sample in side], dtype=bool)


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """The cosine of one sample's finite, float64 arrays (of one shape), as ``_cosines`` computes it."""
    return float(_cosines(ref.reshape(1, -1), got.reshape(1, -1))[0])


def _cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity; two zero vectors are identical (1), one zero vector is orthogonal (0)."""
    return _cosines_from(np.sum(ref * got, axis=1), np.sum(ref * ref, axis=1), np.sum(got * got, axis=1))


def _cosines_from(dot: np.ndarray, ref_squares: np.ndarray, got_squares: np.ndarray) -> np.ndarray:
    """``_cosines`` from each sample's dot product and squared norms."""
    ref_norms, got_norms = np.sqrt(ref_squares), np.sqrt(got_squares)
    norms = ref_norms * got_norms
    both_zero = (ref_norms == 0) & (got_norms == 0)
    cosine = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return np.where(both_zero, 1.0, np.clip(cosine, -1.0, 1.0))
