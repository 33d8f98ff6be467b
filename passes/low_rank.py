"""Low-rank factorisation: split MatMul, Gemm and pointwise Conv layers into two thinner layers.

A constant weight W (K×N) becomes A (K×r) then B (r×N), which saves params and MACs when r(K+N) < K·N. By default
the factors are fitted to the layer's real inputs: each candidate's input activations are streamed over the
calibration samples into a Gram matrix XᵀX, and the factorisation minimises the layer's output error on them
(``graphopt_passes._math.low_rank`` holds the maths). The original node becomes the second factor, so its name,
output, bias and any bias Add after it stay where they were.

Two candidate layers joined directly through an inner dimension thinner than both outer ones are already factored
(exactly what this pass produces) and are left alone, so a second run splits nothing further.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.activations import reduce_activations
from graphopt.graph import Scope, constant_array, copy_model, editing, import_graph, label, overridable_initializers
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit, level_unit, nested_levels
from graphopt_passes._math import low_rank as lr

__all__ = ["LowRankPass"]

log = logging.getLogger(__name__)

_RIDGE = 1e-4


@dataclass(frozen=True)
class _Layer:
    """A candidate seen as ``X·W`` with W (K×N). ``side`` says where X holds K: "right" on the last axis (X·W),
    "left" on axis -2 (W·X), "conv" on axis 1; ``spatial`` is a pointwise Conv's kernel rank."""

    index: int
    name: str
    side: str
    source: str
    output: str
    weight: np.ndarray
    dtype: np.dtype
    spatial: int = 0


@dataclass(frozen=True)
class _Split:
    layer: _Layer
    choice: lr.Choice
    macs: int
    unit: str

    @property
    def saved(self) -> int:
        k, n = self.layer.weight.shape
        return int(k * n - self.choice.rank * (k + n))


class LowRankPass(PassBase):
    """Split MatMul/Gemm/1×1-Conv weights into two low-rank factors fitted to calibration activations."""

    name = "low-rank"
    goal_stage = 0
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        energy: float = field(default=0.99, metadata={"help": "rank: keep this share of the (whitened) Σσ²"})
        ratio: float | None = field(
            default=None, metadata={"help": "rank: keep this fraction of each layer's params (overrides the others)"}
        )
        max_error: float | None = field(
            default=None,
            metadata={"help": "rank: the smallest whose relative layer-output error on calibration data is at most "
                      "this (overrides energy)"},
        )
        method: Literal["data-aware", "svd"] = field(
            default="data-aware", metadata={"help": "data-aware: fit the factors to the layer's inputs; svd: plain"}
        )
        refit: bool = field(
            default=True,
            metadata={"help": "least-squares refit of B on calibration data (method=svd; data-aware B is optimal)"},
        )
        min_size: int = field(default=4096, metadata={"help": "skip layers with fewer weights (K·N)"})
        min_saving: float = field(
            default=0.1, metadata={"help": "split only if the factors remove at least this fraction of the params"}
        )
        levels: tuple[float, ...] = field(
            default=(),
            metadata={"help": "params ratios tried per layer (e.g. 0.9;0.75;0.6): one unit per layer and level, so "
                      "verified narrowing gives each layer the smallest rank the budget allows (overrides ratio)"},
        )

        def __post_init__(self) -> None:
            if not 0 < self.energy <= 1 or not 0 <= self.min_saving < 1 or self.min_size < 0:
                raise ValueError("need 0 < energy <= 1, 0 <= min_saving < 1 and min_size >= 0")
            if (self.ratio is not None and not 0 < self.ratio < 1) or (self.max_error is not None and self.max_error < 0):
                raise ValueError("need 0 < ratio < 1 and max_error >= 0")
            if any(not 0 < level < 1 for level in self.levels):
                raise ValueError("need 0 < level < 1 for every level")

    def __init__(self, options: LowRankPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[tuple[list[_Split], list[Skip]]] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[LowRankPass, ...]:
        """The default split: fewer multiply-adds and fewer weights."""
        return (cls(),)

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer to split (per layer and level with ``levels``); its sensitivity is its relative
        layer-output error at that rank, so a layer's milder levels rank first."""
        splits = self._plan(model, context)[0] if context.calibration is not None else []
        return nested_levels((Unit(s.unit, s.choice.error, _detail(s), gain=max(s.saved, 1)), s.layer.name,
                              -s.choice.rank) for s in splits)

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        splits, skipped = self._plan(model, context)
        deepest: dict[str, _Split] = {}
        for split in (s for s in splits if context.selects(s.unit)):
            if split.layer.name not in deepest or split.choice.rank < deepest[split.layer.name].choice.rank:
                deepest[split.layer.name] = split
        chosen = sorted(deepest.values(), key=lambda s: s.layer.index)
        if chosen:
            with editing(model) as edit:
                scope = Scope.of(edit.graph)
                nodes = list(edit.graph.nodes)
                for split in chosen:
                    _rewire(edit.graph, nodes[split.layer.index], split, scope)
            stats = {"layers_split": len(chosen), "params_removed": sum(s.saved for s in chosen),
                     "flops_removed": sum(s.macs for s in chosen)}
            log.info("%s: %s", self.name, stats)
            return PassResult(edit.model, True, stats, tuple(skipped), tuple(_note(s) for s in chosen))
        return PassResult(copy_model(model), False, {"layers_split": 0, "params_removed": 0, "flops_removed": 0}, tuple(skipped))

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> tuple[list[_Split], list[Skip]]:
        """The splits and refusals, cached by model digest: narrowing calls ``run`` once per trial subset."""
        return self._plans.get(model, context, lambda: _make_plan(model, context, self.options))


def _make_plan(
    model: onnx.ModelProto, context: PassContext, options: LowRankPass.Options
) -> tuple[list[_Split], list[Skip]]:
    overridable = overridable_initializers(model.graph)
    if overridable:
        return [], [Skip("graph", f"initializers are also graph inputs (overridable at run time): {overridable[:3]}")]
    graph = import_graph(model)
    scope = Scope.of(graph)
    found = [_match(i, node, scope) for i, node in enumerate(graph.nodes)]
    layers = [f for f in found if isinstance(f, _Layer)]
    skipped = [f for f in found if isinstance(f, Skip)]
    factored = _factored(layers)
    eligible = []
    for layer in layers:
        k, n = layer.weight.shape
        why = factored.get(layer.index, "")
        if not why and k * n < options.min_size:
            why = f"{k}×{n} = {k * n} params < min_size {options.min_size}"
        if not why and lr.rank_for_ratio(k, n, 1 - options.min_saving) == 0:
            why = f"{k}×{n} is too thin: even rank 1 would not save {options.min_saving:.0%} of the params"
        skipped += [Skip(layer.name, why)] if why else []
        eligible += [] if why else [layer]
    if not eligible or context.calibration is None:
        return [], skipped
    grams = _calibrate(model, eligible, context)
    splits = []
    for layer in eligible:
        gram = grams.get((layer.source, layer.side))
        if gram is None or gram.matrix.shape[0] != layer.weight.shape[0]:
            skipped.append(Skip(layer.name, f"no activations of '{layer.source}'"))
            continue
        fit = lr.fit_layer(layer.weight, gram.matrix, _RIDGE)
        k, n = layer.weight.shape
        positions = round(gram.count / max(context.calibration.n_samples, 1))  # rows of X per sample
        levels: list[float | None] = [*sorted(options.levels, reverse=True)] or [options.ratio]
        for level in levels:
            try:
                choice = lr.choose(fit, method=options.method, energy=options.energy, ratio=level,
                                   max_error=options.max_error, refit_svd=options.refit, min_saving=options.min_saving)
            except lr.NoRank as e:
                skipped.append(Skip(layer.name if level is None else level_unit(layer.name, level), str(e)))
                continue
            unit = layer.name if level is None or not options.levels else level_unit(layer.name, level)
            splits.append(_Split(layer, choice, int(positions * (k * n - choice.rank * (k + n))), unit))
    return splits, skipped


def _match(index: int, node: gs.Node, scope: Scope) -> _Layer | Skip | None:
    """The node as a candidate layer, a ``Skip`` for a MatMul/Gemm/Conv that cannot be one, else ``None``."""
    if node.op not in ("MatMul", "Gemm", "Conv") or node.domain not in (None, "", "ai.onnx") or len(node.inputs) < 2:
        return None
    name, arrays = label(node), [constant_array(t) if t.name else None for t in node.inputs[:2]]
    if arrays[0] is not None and (arrays[1] is not None or node.op != "MatMul"):
        return None  # a layer on constants is constant folding's job
    if arrays[1] is None and arrays[0] is None:
        return Skip(name, "no constant weight (both inputs are activations)")
    at = 1 if arrays[1] is not None else 0
    weight, tensor = arrays[at], node.inputs[at]
    assert weight is not None
    why = _refusal(node, weight)
    if not why and len(tensor.outputs) > 1:
        why = f"weight '{tensor.name}' shared by {len(tensor.outputs)} nodes"
    if not why and tensor.name in scope.outer:
        why = f"weight '{tensor.name}' is read inside a subgraph"
    if why:
        return Skip(name, why)
    side = "left" if at == 0 else "conv" if node.op == "Conv" else "right"
    if side == "conv":
        matrix = weight.reshape(weight.shape[:2]).T
    else:
        matrix = weight.T if side == "left" or (node.op == "Gemm" and node.attrs.get("transB", 0)) else weight
    return _Layer(index, name, side, node.inputs[1 - at].name, node.outputs[0].name, matrix.astype(np.float64),
                  weight.dtype, weight.ndim - 2 if side == "conv" else 0)


def _refusal(node: gs.Node, weight: np.ndarray) -> str:
    if weight.dtype.kind != "f":
        return f"weight dtype {weight.dtype} is not float"
    if node.op != "Conv":
        if weight.ndim != 2:
            return f"weight is {weight.ndim}-D, not a matrix"
        return "Gemm with transA=1" if node.op == "Gemm" and node.attrs.get("transA", 0) else ""
    if weight.ndim < 3 or any(d != 1 for d in weight.shape[2:]):
        return f"Conv kernel {'×'.join(map(str, weight.shape[2:])) or '?'} is not pointwise (1×1)"
    if node.attrs.get("group", 1) != 1:
        return f"grouped Conv (group={node.attrs['group']})"
    if any(s != 1 for s in node.attrs.get("strides", [])) or any(node.attrs.get("pads", [])):
        return "strided or padded Conv"
    return ""


def _factored(layers: Sequence[_Layer]) -> dict[int, str]:
    """Pairs X·A → ·B whose inner dimension is thinner than both outer ones: already low rank, left alone."""
    by_output = {layer.output: layer for layer in layers}
    reasons: dict[int, str] = {}
    for second in layers:
        first = by_output.get(second.source)
        (k, r), (inner, n) = (first.weight.shape, second.weight.shape) if first else ((0, 0), (1, 0))
        if first is not None and first.side == second.side and r == inner < min(k, n):
            why = f"already factored: '{first.name}' → '{second.name}' through rank {r}"
            reasons[first.index] = reasons.setdefault(second.index, why)
    return reasons


def _calibrate(
    model: onnx.ModelProto, layers: Sequence[_Layer], context: PassContext
) -> dict[tuple[str, str], lr.Gram]:
    """One Gram matrix per (activation, side), reduced batch by batch (``CalibrationError`` when onnxruntime
    cannot run the model)."""
    assert context.calibration is not None
    keys = sorted({(layer.source, layer.side) for layer in layers})
    grams: dict[tuple[str, str], lr.Gram] = {}

    def observe(source: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            for side in (side for name, side in keys if name == source):
                axis = 1 if side == "conv" else -2 if side == "left" and x.ndim >= 2 else -1
                grams[(source, side)] = lr.accumulate_gram(grams.get((source, side)), x, axis)
        return update

    reduce_activations(model, {source: observe(source) for source, _ in keys}, context.calibration, context.runtime,
                       progress=context.progress, label="low-rank calibration")
    return grams


def _detail(split: _Split) -> str:
    k, n = split.layer.weight.shape
    return f"r={split.choice.rank} of {min(k, n)}, params {1 - split.saved / (k * n):.2f}×"


def _note(split: _Split) -> str:
    (k, n), c = split.layer.weight.shape, split.choice
    return (f"{split.layer.name}: {k}×{n} → r={c.rank} ({c.how}), params {k * n}→{c.rank * (k + n)}, output error "
            f"svd {c.svd_error:.2e}, data-aware {c.aware_error:.2e}, applied {c.error:.2e}")


def _rewire(graph: gs.Graph, node: gs.Node, split: _Split, scope: Scope) -> None:
    """Insert X·A before the node and make the node ·B; it keeps its output, bias and attributes."""
    layer, rank = split.layer, split.choice.rank
    if label(node) != layer.name or node.outputs[0].name != layer.output:
        raise ValueError(f"node {layer.index} is not '{layer.name}' any more")
    a, b = split.choice.left.astype(layer.dtype), split.choice.right.astype(layer.dtype)
    at = 0 if layer.side == "left" else 1
    op, attrs = "MatMul", {}
    if layer.side == "left":
        a, b = a.T, b.T  # W·X ≈ Bᵀ·(Aᵀ·X)
    elif layer.side == "conv":
        ones = (1,) * layer.spatial
        a, b = a.T.reshape(rank, -1, *ones), b.T.reshape(-1, rank, *ones)
        op, attrs = "Conv", {"kernel_shape": list(ones)}
    base, x = node.inputs[at].name, node.inputs[1 - at]
    first_w = gs.Constant(scope.fresh(f"{base}_low_rank_a"), np.ascontiguousarray(a))
    mid = gs.Variable(scope.fresh(f"{layer.output}_low_rank"), dtype=node.outputs[0].dtype)
    inputs = [first_w, x] if at == 0 else [x, first_w]
    graph.nodes.append(gs.Node(op, scope.fresh(f"{layer.name}_low_rank"), attrs, inputs, [mid]))
    node.inputs[at] = gs.Constant(scope.fresh(f"{base}_low_rank_b"), np.ascontiguousarray(b))
    node.inputs[1 - at] = mid
    if node.op == "Gemm":
        node.attrs["transB"] = 0
