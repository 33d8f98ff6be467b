"""Pure float64 error metrics between a reference output and a candidate output (axis 0 = samples).

NaN rule: a NaN where the reference has a NaN, and an infinity equal to the reference's, count as exact matches;
any other non-finite value on either side is a ``nonfinite_mismatch`` and fails every tolerance. The remaining
metrics are computed over the positions where both sides are finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ErrorStats", "error_stats", "looks_like_classifier", "per_sample_cosine", "per_sample_top1"]

_MAX_CLASSES = 256


def looks_like_classifier(shape: tuple[int, ...]) -> bool:
    """Outputs of shape [samples, classes] with 2 to 256 classes are judged on top-1 agreement too.

    Wider rank-2 outputs are usually embeddings, where an argmax carries no meaning.
    """
    return len(shape) == 2 and 2 <= shape[1] <= _MAX_CLASSES


@dataclass(frozen=True)
class ErrorStats:
    """How far a candidate output is from the reference. ``exact`` outputs (integers, booleans) only count
    ``mismatches``. ``min_atol`` is the smallest absolute tolerance that passes together with ``rtol``."""

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

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()} | {
            "snr_db": _finite_or_label(self.snr_db)
        }


def _finite_or_label(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def error_stats(reference: np.ndarray, candidate: np.ndarray, rtol: float = 0.0) -> ErrorStats:
    """Compare ``candidate`` with ``reference`` (same shape, axis 0 = samples)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {candidate.shape} differs from the reference {reference.shape}")
    n = reference.shape[0] if reference.ndim else 1
    exact = not np.issubdtype(reference.dtype, np.inexact)
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(got)
    matched_special = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    nonfinite_mismatch = int(np.count_nonzero(~finite & ~matched_special))
    ref = np.where(finite, ref, 0.0)
    got = np.where(finite, got, 0.0)
    diff = np.abs(got - ref)
    scale = np.abs(ref)
    flat = diff.ravel()
    rel = diff / np.maximum(scale, np.finfo(np.float32).tiny)
    cosines = _cosines(ref.reshape(n, -1), got.reshape(n, -1))
    signal, noise = float(np.sum(ref * ref)), float(np.sum(diff * diff))
    snr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    top1 = None
    if not exact and looks_like_classifier(reference.shape):
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))
    return ErrorStats(
        n_samples=n,
        exact=exact,
        mismatches=int(np.count_nonzero(diff)),
        nonfinite_mismatch=nonfinite_mismatch,
        max_abs=float(flat.max(initial=0.0)),
        mean_abs=float(flat.mean()) if flat.size else 0.0,
        median_abs=float(np.median(flat)) if flat.size else 0.0,
        p99_abs=float(np.percentile(flat, 99)) if flat.size else 0.0,
        max_rel=float(rel.max(initial=0.0)),
        min_atol=float(np.max(diff - rtol * scale, initial=0.0).clip(min=0.0)),
        rtol=rtol,
        cosine=float(cosines.mean()) if cosines.size else 1.0,
        cosine_min=float(cosines.min()) if cosines.size else 1.0,
        snr_db=snr,
        top1=top1,
    )


def per_sample_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The cosine of each sample (axis 0) as ``error_stats`` averages it (non-finite positions count as zero)."""
    n = reference.shape[0] if reference.ndim else 1
    ref, got = reference.astype(np.float64), candidate.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(got)
    return _cosines(np.where(finite, ref, 0.0).reshape(n, -1), np.where(finite, got, 0.0).reshape(n, -1))


def per_sample_top1(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray | None:
    """1.0 where the candidate's argmax equals the reference's, per sample; ``None`` unless classifier-like."""
    if not np.issubdtype(reference.dtype, np.inexact) or not looks_like_classifier(reference.shape):
        return None
    return (np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)).astype(np.float64)


def _cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity; two zero vectors are identical (1), one zero vector is orthogonal (0)."""
    dot = np.sum(ref * got, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(got, axis=1) == 0)
    cosine = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return np.where(both_zero, 1.0, np.clip(cosine, -1.0, 1.0))
