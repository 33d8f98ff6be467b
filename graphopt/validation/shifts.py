"""Shifted inputs: does the optimised model still track the original when the inputs drift from the data it was
calibrated on? A too-tight quantisation range or a pruned "dead" neuron agrees on clean samples and breaks under
a little noise or contrast.

Each shift is a pure, seeded transform of the held-out samples. Per shift, three comparisons: *fidelity*
(optimised vs original, both on shifted samples; judged with the tolerance) and the *stability* of each model
(shifted vs the original on clean samples; informational, it says how hard the shift is).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points

import numpy as np

from graphopt.data import Dataset
from graphopt.errors import GraphoptError, ValidationSetupError, first_line
from graphopt.outputs import Outputs
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section
from graphopt.verify.metrics import comparable, error_stats
from graphopt.verify.verifier import Verifier

__all__ = [
    "SHIFT_GROUP",
    "UNK_ID",
    "Shift",
    "ShiftHook",
    "brightness",
    "check_shifts",
    "contrast",
    "default_shifts",
    "gaussian_noise",
    "load_shift_hooks",
    "scale",
    "token_dropout",
    "truncation_mask",
]

SHIFT_GROUP = "graphopt.shifts"
UNK_ID = 100
"""``[UNK]`` in the BERT vocabulary: what dropped tokens become by default."""

NOISE_SNR_DB = (40.0, 30.0, 20.0)
BRIGHTNESS_STDS = (0.1, -0.1)
CONTRAST_FACTORS = (0.8, 1.2)
SCALE_FACTORS = (0.9, 1.1)
DROPOUT_RATES = (0.05, 0.10, 0.20)
TRUNCATION_KEEP = (0.75, 0.50)

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Shift:
    """A named transform of every input array (axis 0 = samples). ``apply`` returns all arrays, changed or not,
    and must not modify its argument; ``kind`` groups shifts into one plotted series along ``level``."""

    kind: str
    level: float
    label: str
    apply: Callable[[Arrays, np.random.Generator], dict[str, np.ndarray]]


ShiftHook = Callable[[Dataset], Sequence[Shift]]
"""A ``graphopt.shifts`` entry point: the held-out samples → the shifts that suit them."""


def _per_sample(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def gaussian_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus white noise whose power is each sample's mean signal power divided by ``10^(snr_db/10)``."""
    values = x.astype(np.float64)
    power = np.mean(values**2, axis=_per_sample(values), keepdims=True)
    sigma = np.sqrt(power / 10 ** (snr_db / 10))
    return (values + sigma * rng.standard_normal(values.shape)).astype(x.dtype)


def brightness(x: np.ndarray, stds: float) -> np.ndarray:
    """``x`` offset by ``stds`` standard deviations of the whole input (a global lighting change)."""
    values = x.astype(np.float64)
    return (values + stds * float(values.std())).astype(x.dtype)


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Each sample stretched by ``factor`` around its own mean."""
    values = x.astype(np.float64)
    mean = values.mean(axis=_per_sample(values), keepdims=True)
    return (mean + factor * (values - mean)).astype(x.dtype)


def scale(x: np.ndarray, factor: float) -> np.ndarray:
    """Every value multiplied by ``factor`` (a gain change)."""
    return (x.astype(np.float64) * factor).astype(x.dtype)


def token_dropout(ids: np.ndarray, real: np.ndarray, rate: float, rng: np.random.Generator,
                  unk_id: int = UNK_ID) -> np.ndarray:
    """Each real (non-padding) token replaced by ``unk_id`` with probability ``rate``."""
    dropped = real & (rng.random(ids.shape) < rate)
    return np.where(dropped, np.asarray(unk_id, dtype=ids.dtype), ids)


def truncation_mask(real: np.ndarray, keep: float) -> np.ndarray:
    """Positions [N, T] that survive cutting each sequence to ``keep`` of its real length, rounded up."""
    lengths = real.sum(axis=1, keepdims=True)
    kept = np.ceil(keep * lengths)
    return real & (np.cumsum(real, axis=1) <= kept)


def _auxiliary_ids(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in ("mask", "type", "segment", "position"))


def _float_inputs(dataset: Dataset) -> list[str]:
    return [n for n, a in dataset.arrays.items() if np.issubdtype(a.dtype, np.floating)]


def _token_inputs(dataset: Dataset) -> list[str]:
    """Rank-2 integer arrays [N, T] that hold token ids (not masks, type or position ids)."""
    return [n for n, a in dataset.arrays.items()
            if n not in dataset.stacked and a.ndim == 2 and np.issubdtype(a.dtype, np.integer) and not _auxiliary_ids(n)]


def _real_tokens(arrays: Arrays, name: str) -> np.ndarray:
    """Where ``name`` holds real tokens: its attention mask's ones if an input named like a mask has its shape,
    else its non-zero ids."""
    ids = arrays[name]
    mask = next((a for n, a in arrays.items() if "mask" in n.lower() and a.shape == ids.shape), None)
    return np.asarray(mask != 0 if mask is not None else ids != 0)


def _map(arrays: Arrays, names: Sequence[str], transform: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    return {n: transform(a) if n in names else a for n, a in arrays.items()}


def _apply_noise(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str], snr_db: float) -> dict[str, np.ndarray]:
    return _map(arrays, names, lambda x: gaussian_noise(x, snr_db, rng))


def _apply_brightness(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str],
                      stds: float) -> dict[str, np.ndarray]:
    return _map(arrays, names, lambda x: brightness(x, stds))


def _apply_contrast(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str],
                    factor: float) -> dict[str, np.ndarray]:
    return _map(arrays, names, lambda x: contrast(x, factor))


def _apply_scale(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str],
                 factor: float) -> dict[str, np.ndarray]:
    return _map(arrays, names, lambda x: scale(x, factor))


def _apply_dropout(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str], rate: float,
                   unk_id: int) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for name in names:
        out[name] = token_dropout(arrays[name], _real_tokens(arrays, name), rate, rng, unk_id)
    return out


def _apply_truncation(arrays: Arrays, rng: np.random.Generator, *, names: Sequence[str],
                      keep: float) -> dict[str, np.ndarray]:
    """Zero every [N, T] input (ids, mask, type ids) beyond the cut: shapes stay, so samples still batch."""
    out = dict(arrays)
    for name in names:
        real = _real_tokens(arrays, name)
        cut = real & ~truncation_mask(real, keep)
        for other, array in out.items():
            if array.shape == cut.shape:
                out[other] = np.where(cut, np.zeros((), dtype=array.dtype), array)
    return out


def default_shifts(dataset: Dataset, unk_id: int = UNK_ID) -> list[Shift]:
    """Shifts chosen by input kind: noise for float inputs; brightness, contrast and scale for image-like ones
    (rank ≥ 3 with the sample axis); token dropout and truncation for token-id inputs [N, T]."""
    floats = _float_inputs(dataset)
    images = [n for n in floats if dataset.arrays[n].ndim >= 3]
    tokens = _token_inputs(dataset)
    shifts: list[Shift] = []
    if floats:
        shifts += [Shift("noise", snr, f"noise {snr:g} dB", partial(_apply_noise, names=floats, snr_db=snr))
                   for snr in NOISE_SNR_DB]
    if images:
        shifts += [Shift("brightness", s, f"brightness {s:+g}σ", partial(_apply_brightness, names=images, stds=s))
                   for s in BRIGHTNESS_STDS]
        shifts += [Shift("contrast", f, f"contrast ×{f:g}", partial(_apply_contrast, names=images, factor=f))
                   for f in CONTRAST_FACTORS]
        shifts += [Shift("scale", f, f"scale ×{f:g}", partial(_apply_scale, names=images, factor=f))
                   for f in SCALE_FACTORS]
    if tokens:
        shifts += [Shift("token_dropout", r, f"token dropout {r:.0%}",
                         partial(_apply_dropout, names=tokens, rate=r, unk_id=unk_id)) for r in DROPOUT_RATES]
        shifts += [Shift("truncation", k, f"truncation to {k:.0%}", partial(_apply_truncation, names=tokens, keep=k))
                   for k in TRUNCATION_KEEP]
    return shifts


def load_shift_hooks() -> list[ShiftHook]:
    """The callables registered in the ``graphopt.shifts`` entry-point group, by name."""
    hooks: list[ShiftHook] = []
    for point in sorted(entry_points(group=SHIFT_GROUP), key=lambda p: p.name):
        try:
            hook = point.load()
        except Exception as e:  # third-party import code can raise anything
            raise ValidationSetupError(f"shift hook '{point.name}' cannot be loaded: {first_line(e)}") from e
        if not callable(hook):
            raise ValidationSetupError(f"shift hook '{point.name}' is not callable")
        hooks.append(hook)
    return hooks


def _hook_shifts(hooks: Sequence[ShiftHook], dataset: Dataset) -> list[Shift]:
    shifts: list[Shift] = []
    for hook in hooks:
        found = list(hook(dataset))
        if not all(isinstance(s, Shift) for s in found):
            raise ValidationSetupError(f"shift hook {getattr(hook, '__name__', hook)!r} returned something that "
                                       "is not a graphopt.validation.shifts.Shift")
        shifts += found
    return shifts


def _shifted(dataset: Dataset, shift: Shift, seed: int) -> Dataset:
    """The held-out samples under ``shift``, with an rng seeded by the run seed and the shift's label (so a shift's
    samples do not depend on which other shifts run)."""
    rng = np.random.default_rng([seed, zlib.crc32(shift.label.encode())])
    arrays = shift.apply(dataset.to_arrays(), rng)
    if set(arrays) != set(dataset.arrays) or any(len(a) != dataset.n_samples for a in arrays.values()):
        raise ValidationSetupError(f"shift '{shift.label}' must return every input with {dataset.n_samples} samples")
    return Dataset(arrays, dataset.stacked, dataset.batchable, dataset.synthetic, f"{dataset.source} [{shift.label}]",
                   dataset.labels)


def _worst(reference: Outputs, candidate: Outputs) -> tuple[float | None, float | None]:
    """Cosine and top-1 of the output furthest from ``reference`` (lowest cosine; of a ragged output, over the
    samples whose shapes agree)."""
    stats = [error_stats(ref, candidate[n]) for n, ref in reference.items()
             if n in candidate and comparable(ref, candidate[n])]
    if not stats:
        return None, None
    worst = min(stats, key=lambda s: s.cosine)
    return worst.cosine, worst.top1


def _check(ctx: ValidationContext, shift: Shift) -> Check:
    try:
        shifted = _shifted(ctx.held_out, shift, ctx.seed)
        original, optimized = ctx.outputs("original", shifted), ctx.outputs("optimized", shifted)
    except GraphoptError as e:
        return Check(shift.label, False, {}, first_line(e), shift.kind, shift.level)
    fidelity = Verifier.compare(original, optimized, ctx.tolerance, f"original under {shift.label}", ctx.kinds)
    worst = min(fidelity.stats.values(), key=lambda s: s.cosine, default=None)
    clean = ctx.reference()
    original_cosine, original_top1 = _worst(clean, original)
    optimized_cosine, optimized_top1 = _worst(clean, optimized)
    metrics: dict[str, float | None] = {
        "fidelity_cosine": worst.cosine if worst else None,
        "fidelity_top1": worst.top1 if worst else None,
        "original_stability_cosine": original_cosine,
        "original_stability_top1": original_top1,
        "optimized_stability_cosine": optimized_cosine,
        "optimized_stability_top1": optimized_top1,
    }
    return Check(shift.label, fidelity.passed, metrics, "; ".join(fidelity.failures), shift.kind, shift.level)


def check_shifts(ctx: ValidationContext, shifts: Sequence[Shift] | None = None) -> Section:
    """One check per shift: the optimised model must match the original on shifted held-out samples.

    ``shifts`` replaces the default choice (``default_shifts`` plus the ``graphopt.shifts`` hooks).
    """
    section = Section("shifts", "Shifted inputs")
    chosen = list(shifts) if shifts is not None else [*default_shifts(ctx.held_out),
                                                      *_hook_shifts(load_shift_hooks(), ctx.held_out)]
    if not chosen:
        section.skipped = "no input a default shift applies to"
        kinds = ", ".join(f"{n} {a.dtype} {list(a.shape[1:])}" for n, a in ctx.held_out.arrays.items())
        section.notes.append(f"default shifts cover float inputs (noise; brightness, contrast and scale when "
                             f"image-like) and token-id inputs [N, T] (dropout, truncation); the inputs are {kinds}")
        return section
    section.checks.extend(_check(ctx, shift) for shift in chosen)
    section.notes.append(f"{ctx.held_out.n_samples} held-out samples per shift (seed {ctx.seed}); fidelity: optimised "
                         "vs original on the shifted samples, judged with the tolerance; stability: each model on "
                         "shifted samples vs the original on clean ones (how hard the shift is; not judged)")
    return section

