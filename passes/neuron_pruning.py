"""Neuron pruning: remove each layer's least important output channels and refit the next layer from data.

Per channel group (a layer, the channel-preserving ops after it, the layers reading it; see
``graphopt_passes._channels``) the pass streams the calibration samples once and keeps, for every reader, the
augmented Gram matrix of its input: rows of a matrix product, or kernel patches of a Conv. A channel's importance
is the RMS change its removal causes in the readers' outputs (``energy``, exact per channel, mean excluded when a
refit will absorb it) or the L2 norm of its producing weights (``magnitude``). The lowest-scoring channels, up to
``ratio`` of the layer, leave the producer, the chain and the readers, and each reader is then refitted by ridge
least squares so its outputs on the calibration inputs match the original's: kept channels correlated with the
removed ones take over their share, and the bias takes over their mean. This is the layer-wise distillation the
user asked for, in closed form. ``reconstruct=mean`` only moves the removed channels' mean into the bias and
``reconstruct=none`` drops them, for comparison.

Units are ``layer@ratio`` for ``steps`` ratios per layer (``ratio``, then smaller), ranked by the refitted error,
and each layer gets its largest selected ratio: the manager's narrowing shrinks a layer's ratio where the budget
breaks. Readers that are ConvTranspose, or inputs too wide for a Gram matrix, are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.activations import reduce_activations
from graphopt.graph import copy_model, editing, import_graph, label
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit, level_unit, nested_levels
from graphopt.summary import count_params
from graphopt_passes import _channels as channels
from graphopt_passes._math import pruning
from graphopt_passes._math.patches import ConvGeometry, patches

__all__ = ["ChannelPlan", "NeuronPruningPass"]

log = logging.getLogger(__name__)

_CHUNK = 16384  # patch rows per Gram update: bounds the im2col copy of a large feature map
_POSITIONS = 4096
"""Kernel positions per sample a Conv reader's Gram takes: a random subset of a larger feature map (a 416² detector's
first layers have 43k). Only maps larger than 64² are sampled, and their layers have few input channels: a 3×3
Conv reading 64 channels has 577 unknowns per output channel, and each sample adds 4096 rows. The Gram of every
position took 43 s of a 166-s pruning run on ddddocr's detector."""
_FIT_BYTES = 1 << 27
"""Refits kept for later runs of the pass (128 MiB): narrowing refits the same layers in trial after trial, and a
refit's solve took half of a 15-layer trial's rewrite on PP-OCRv4 det."""


@dataclass(frozen=True)
class ChannelPlan:
    """One layer pruned at one ratio: the channels removed, the readers' relative output error (RMS, the worst
    reader) with the channels simply dropped and after the refit, and about how many weights go."""

    layer: str
    ratio: float
    unit: str
    channels: int
    removed: tuple[int, ...]
    error_dropped: float
    error_refit: float
    params: int = 0
    producers: int = 1

    @property
    def change(self) -> str:
        """``24 → 20 channels``, and in a residual group how many layers write the stream."""
        stream = f" of a residual stream written by {self.producers} layers" if self.producers > 1 else ""
        return f"{self.channels} → {self.channels - len(self.removed)} channels{stream}"


@dataclass
class _ReaderGram:
    """The augmented Gram of one reader's input, as rows of the matrix product it computes."""

    block: int
    geometry: ConvGeometry | None = None
    gram: pruning.AugmentedGram | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def update(self, x: np.ndarray) -> None:
        rows = patches(x, self.geometry) if self.geometry is not None else np.asarray(x)
        flat = rows.reshape(-1, rows.shape[-1])
        positions = flat.shape[0] // max(len(x), 1)
        if self.geometry is not None and positions > _POSITIONS:  # a large feature map: a random subset per sample
            picked = np.sort(self.rng.choice(positions, _POSITIONS, replace=False))
            flat = flat.reshape(len(x), positions, -1)[:, picked].reshape(-1, flat.shape[-1])
        for start in range(0, flat.shape[0], _CHUNK):
            self.gram = pruning.accumulate(self.gram, flat[start:start + _CHUNK])


@dataclass
class _Measured:
    readers: dict[str, list[_ReaderGram]] = field(default_factory=dict)  # group -> one per reader, in order
    plans: dict[str, list[ChannelPlan]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    fits: dict[bytes, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fit_bytes: int = 0

    def fit(self, reader: _ReaderGram, matrix: np.ndarray, rows: np.ndarray,
            solve: Callable[[pruning.AugmentedGram, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, np.ndarray]:
        """``solve(reader's Gram, matrix, rows)``, kept by reader, rows and matrix while ``_FIT_BYTES`` allow."""
        assert reader.gram is not None
        key = hashlib.blake2b(b"".join((id(reader).to_bytes(8, "little"), np.asarray(matrix.shape).tobytes(),
                                        rows.tobytes(), matrix.tobytes())), digest_size=16).digest()
        if key not in self.fits:
            fitted = solve(reader.gram, matrix, rows)
            size = sum(a.nbytes for a in fitted)
            if self.fit_bytes + size > _FIT_BYTES:
                return fitted
            for array in fitted:
                array.flags.writeable = False  # shared by every later run that refits this layer alike
            self.fits[key], self.fit_bytes = fitted, self.fit_bytes + size
        return self.fits[key]


class NeuronPruningPass(PassBase):
    """Remove the least important channels of each layer and refit the next layer by least squares on data."""

    name = "neuron-pruning"
    goal_stage = 0
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        ratio: float = field(default=0.3, metadata={"help": "largest share of each layer's channels to remove"})
        steps: int = field(default=3, metadata={"help": "ratios tried per layer: ratio·k/steps for k = steps…1; "
                                                        "narrowing keeps each layer's largest ratio that verifies"})
        score: str = field(default="energy", metadata={"help": "channel importance: energy (RMS change of the next "
                                                               "layer's output, from data) or magnitude (weight L2)"})
        reconstruct: str = field(default="ls", metadata={"help": "refit of the next layer: ls (ridge least squares), "
                                                                 "mean (bias absorbs the mean only) or none"})
        ridge: float = field(default=1e-3, metadata={"help": "ridge of the refit, relative to the mean input energy"})
        align: int = field(default=4, metadata={"help": "keep Conv channel counts a multiple of this (odd counts "
                                                        "defeat onnxruntime's blocked NCHWc kernels)"})
        max_features: int = field(default=4096, metadata={"help": "widest reader input (rows or patch size) to fit"})
        residual: bool = field(default=True, metadata={"help": "prune residual streams: the layers whose outputs "
                                                               "meet at residual Adds lose the same channels"})

        def __post_init__(self) -> None:
            if not 0 < self.ratio < 1:
                raise ValueError("need 0 < ratio < 1")
            if self.steps < 1 or self.align < 1 or self.max_features < 1:
                raise ValueError("steps, align and max_features must be at least 1")
            if self.score not in ("energy", "magnitude"):
                raise ValueError(f"score must be energy or magnitude, not {self.score!r}")
            if self.reconstruct not in ("ls", "mean", "none"):
                raise ValueError(f"reconstruct must be ls, mean or none, not {self.reconstruct!r}")
            if self.ridge < 0:
                raise ValueError("ridge must be non-negative")

        @property
        def ratios(self) -> tuple[float, ...]:
            return tuple(round(self.ratio * k / self.steps, 6) for k in range(self.steps, 0, -1))

    def __init__(self, options: NeuronPruningPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[_Measured] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[NeuronPruningPass, ...]:
        """Up to half of each layer's channels in five steps (narrowing keeps each layer's largest step that
        verifies): fewer channels are both faster and smaller, and the default's 30% leaves speed unclaimed where the
        budget allows more (cnn32 with int8 after it: 0.278× the original's latency against 0.322×)."""
        return (cls(cls.Options(ratio=0.5, steps=5)),)

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer and ratio; its sensitivity is the readers' relative output error after the refit."""
        measured = self._measure(model, context)
        refit = self.options.reconstruct != "none"
        return nested_levels((Unit(plan.unit, plan.error_refit if refit else plan.error_dropped,
                                   plan.change,
                                   max(plan.params, 1)), layer, len(plan.removed))
                             for layer, plans in measured.plans.items() for plan in plans)

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        measured = self._measure(model, context)
        eligible = sum(plans[0].channels for plans in measured.plans.values() if plans)
        empty = {"channels_removed": 0, "channels_eligible": eligible, "params_removed": 0, "layers_pruned": 0}
        chosen = {}
        for layer, plans in measured.plans.items():
            selected = [plan for plan in plans if context.selects(plan.unit)]
            if selected:
                chosen[layer] = max(selected, key=lambda plan: len(plan.removed))
        if not chosen:
            return PassResult(copy_model(model), False, empty, tuple(measured.skipped))
        with editing(model) as edit:
            groups = {g.name: g for g in channels.find_channel_groups(edit.graph, residual=self.options.residual)
                      if isinstance(g, channels.ChannelGroup) and g.name in chosen}
            removals = [(groups[name], dict.fromkeys(plan.removed, 0.0)) for name, plan in chosen.items()]
            removed = channels.remove_channels(edit.graph, removals, self._refit(groups, measured))
        stats = {"channels_removed": removed, "channels_eligible": eligible,
                 "params_removed": count_params(model) - count_params(edit.model), "layers_pruned": len(chosen)}
        notes = tuple(f"{plan.layer}: {plan.change}; next-layer "
                      f"relative error {plan.error_dropped:.3g} dropped → {plan.error_refit:.3g} refitted "
                      f"({self.options.reconstruct})" for plan in chosen.values())
        return PassResult(edit.model, True, stats, tuple(measured.skipped), notes)

    def _refit(self, groups: dict[str, channels.ChannelGroup], measured: _Measured) -> channels.Refit:
        by_reader = {id(link.node): reader for name, group in groups.items()
                     for link, reader in zip(group.consumers, measured.readers[name], strict=True)}

        def refit(link: channels.Link, matrix: np.ndarray, keep: list[int]) -> tuple[np.ndarray, np.ndarray]:
            reader = by_reader[id(link.node)]
            return measured.fit(reader, matrix, _rows(keep, reader.block), self._fit)

        return refit

    def _fit(self, gram: pruning.AugmentedGram, matrix: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows of ``matrix`` and the bias change, as ``reconstruct`` asks."""
        if self.options.reconstruct == "ls":
            return pruning.reconstruct(gram, matrix, None, keep, self.options.ridge)
        gone = np.setdiff1d(np.arange(matrix.shape[0]), keep)
        if self.options.reconstruct == "mean":
            mean = gram.matrix[-1, :-1] / max(gram.count, 1)
            return matrix[keep], mean[gone] @ matrix[gone]
        return matrix[keep], np.zeros(matrix.shape[1])

    def _measure(self, model: onnx.ModelProto, context: PassContext) -> _Measured:
        """Grams and plans, cached by model digest: narrowing runs the pass once per trial on the same model."""
        if context.calibration is None:
            return _Measured()
        return self._plans.get(model, context, lambda: self._calibrate(model, context))

    def _calibrate(self, model: onnx.ModelProto, context: PassContext) -> _Measured:
        assert context.calibration is not None
        measured = _Measured()
        groups = []
        for found in channels.find_channel_groups(import_graph(model), residual=self.options.residual):
            why = _refusal(found, self.options.max_features) if isinstance(found, channels.ChannelGroup) else ""
            if isinstance(found, Skip) or why:
                measured.skipped.append(found if isinstance(found, Skip) else Skip(found.name, why))
            else:
                groups.append(found)
        reducers: dict[str, list[Callable[[np.ndarray], None]]] = {}
        for group in groups:
            readers = measured.readers[group.name] = []
            for link in group.consumers:
                reader = _ReaderGram(link.layout.block) if link.node.op != "Conv" else _conv_reader(link.node)
                readers.append(reader)
                reducers.setdefault(link.node.inputs[0].name, []).append(reader.update)
        if not reducers:
            return measured
        reduce_activations(model, {name: _fan_out(fns) for name, fns in reducers.items()}, context.calibration,
                           context.runtime, progress=context.progress, label="neuron-pruning calibration")
        for group in groups:
            measured.plans[group.name] = self._plan(group, measured)
        return measured

    def _plan(self, group: channels.ChannelGroup, measured: _Measured) -> list[ChannelPlan]:
        producer, options = group.producer, self.options
        weights = [channels.constant_input(p.node, 1) for p in group.producers]
        readers, skipped = measured.readers[group.name], measured.skipped
        matrices = [_matrix(link.node) for link in group.consumers]
        grams = [reader.gram for reader in readers]
        if any(gram is None for gram in grams):
            skipped.append(Skip(group.name, "no calibration rows reached its readers"))
            return []
        if options.score == "magnitude":
            scores = np.sqrt(sum(pruning.channel_norms(w, p.weight_axis) ** 2
                                 for w, p in zip(weights, group.producers, strict=True)))
        else:
            scores = np.sqrt(sum(pruning.block_energy_scores(gram, m, reader.block,  # type: ignore[arg-type]
                                                             centered=options.reconstruct != "none") ** 2
                                 for gram, m, reader in zip(grams, matrices, readers, strict=True)))
        convs = any(p.node.op in ("Conv", "ConvTranspose") for p in group.producers)
        align = options.align if convs else 1
        per_channel = (sum(w.size for w in weights) // producer.channels
                       + sum(reader.block * m.shape[1] for reader, m in zip(readers, matrices, strict=True)))
        plans: list[ChannelPlan] = []
        for ratio in options.ratios:
            unit = group.name if len(options.ratios) == 1 else level_unit(group.name, ratio)
            removed = pruning.channels_to_remove(scores, ratio, align=align, minimum=1)
            if removed.size == 0 or (plans and len(plans[-1].removed) == removed.size):
                skipped.append(Skip(unit, f"removes no channel{' beyond the larger ratio' if plans else ''} "
                                          f"of {producer.channels} (align {align})"))
                continue
            keep = [k for k in range(producer.channels) if k not in set(removed.tolist())]
            dropped = refit = 0.0
            for gram, m, reader in zip(grams, matrices, readers, strict=True):
                rows = _rows(keep, reader.block)
                dropped = max(dropped, pruning.output_error(gram, m, None, rows, m[rows], None))  # type: ignore[arg-type]
                new, delta = measured.fit(reader, m, rows, self._fit)  # the runs that prune this layer reuse it
                refit = max(refit, pruning.output_error(gram, m, None, rows, new, delta))  # type: ignore[arg-type]
            plans.append(ChannelPlan(group.name, ratio, unit, producer.channels, tuple(int(k) for k in removed),
                                     math.sqrt(dropped), math.sqrt(refit), removed.size * per_channel,
                                     len(group.producers)))
        return plans


def _refusal(group: channels.ChannelGroup, max_features: int) -> str:
    for link in group.consumers:
        where = f"{link.node.op} '{label(link.node)}'"
        if link.node.op == "ConvTranspose":
            return f"{where} reads it, and a ConvTranspose cannot be refitted"
        features = _matrix(link.node).shape[0]
        if features > max_features:
            return f"{where} reads {features} features, above max_features={max_features}"
    return ""


def _matrix(node: gs.Node) -> np.ndarray:
    """A reader's weight as the K×N matrix of ``x·W`` (float64)."""
    weight = channels.constant_input(node, 1).astype(np.float64)
    if node.op == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    return weight.T if node.op == "Gemm" and node.attrs.get("transB", 0) else weight


def _conv_reader(node: gs.Node) -> _ReaderGram:
    weight = channels.constant_input(node, 1)
    attrs = node.attrs
    geometry = ConvGeometry(tuple(attrs.get("kernel_shape", weight.shape[2:])), tuple(attrs.get("strides", ())),
                            tuple(attrs.get("dilations", ())), tuple(attrs.get("pads", ())),
                            str(attrs.get("auto_pad", "NOTSET")))
    return _ReaderGram(int(np.prod(weight.shape[2:], dtype=np.int64)), geometry)


def _rows(keep: list[int], block: int) -> np.ndarray:
    """The reader's input rows of the kept channels: ``block`` consecutive rows each."""
    return (np.asarray(keep, np.intp)[:, None] * block + np.arange(block)).reshape(-1)


def _fan_out(functions: list[Callable[[np.ndarray], None]]) -> Callable[[np.ndarray], None]:
    def update(x: np.ndarray) -> None:
        for function in functions:
            function(x)

    return update
