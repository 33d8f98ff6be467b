"""Weight pruning: zero the least important weights of MatMul, Gemm and Conv layers, unstructured or N:M (2:4).

Every output of a layer keeps the same share of its inputs: the entries with the lowest score go, by magnitude
``|W_ij|`` or by Wanda's data-aware ``|W_ij|·‖X_i‖`` (a large weight on an input that is always small matters
little). With ``correct`` the kept weights of each output are then refitted by least squares so that the layer
reproduces its original outputs on the calibration samples: the exact per-column form of the OBS/SparseGPT update
(``graphopt_passes._math.pruning`` holds the maths). A Conv is the same matrix product over its kernel patches
(im2col), so its Gram matrix is streamed over the patches, and a grouped Conv is one such product per group. Each
layer is fitted to the original model's activations on its own, so each is one unit the manager can leave out;
with ``levels`` each layer offers one unit per sparsity, and narrowing keeps for every layer the highest that fits.

Pruning changes weight values only, never the graph, so the pass edits the weight tensors of the ModelProto in
place instead of going through graphsurgeon, which drops ``Constant(sparse_value)`` nodes. That is where a weight
goes when ONNX's COO form (int64 indices) is smaller than dense, i.e. below density 1/3 for float32. The natural
home, ``graph.sparse_initializer``, loads in onnxruntime 1.32, but onnx's full check types it as a sparse tensor
and rejects it as a MatMul input; a Constant with a sparse value yields a dense tensor and passes both.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.activations import reduce_activations
from graphopt.graph import copy_model, label, nested_graphs, overridable_initializers, subgraph_reads
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit, level_unit, nested_levels
from graphopt.weights import to_array
from graphopt_passes._math import pruning as pr
from graphopt_passes._math.patches import ConvGeometry, patches
from graphopt_passes._math.sparse_storage import choose_storage, coo_decode, coo_encode

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional: without it the refit runs on however many threads BLAS picks
    threadpool_limits = None

__all__ = ["WeightPruningPass"]

log = logging.getLogger(__name__)

_LAYERS = ("MatMul", "Gemm", "Conv")
_GramKey = tuple[str, int, "ConvGeometry | None"]  # activation, channel axis, Conv patches


@dataclass(frozen=True)
class _Layer:
    """A layer seen as ``X·W`` with ``matrix`` W (K×N); ``axis`` holds X's K channels, or a Conv's ``geometry``
    turns X into patch rows (K = C/group·kernel size), and ``layout`` maps W back: "kn" as is, "nk" transposed
    (Gemm transB, W·X), "conv" (N×C/group×k…) flattened."""

    name: str
    weight: str
    source: str
    axis: int
    matrix: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    group: int = 1
    positions: int = 1
    geometry: ConvGeometry | None = None

    def stored(self, matrix: np.ndarray) -> np.ndarray:
        w = matrix if self.layout == "kn" else matrix.T
        return np.ascontiguousarray(w.reshape(self.shape).astype(self.dtype))


@dataclass(frozen=True)
class _Pruned:
    unit: str
    layer: _Layer
    matrix: np.ndarray
    zeroed: int
    plain: float
    error: float
    how: str
    sparsity: float


class WeightPruningPass(PassBase):
    """Zero the least important weights (magnitude or |W|·‖X‖, unstructured or N:M) and refit the kept ones."""

    name = "weight-pruning"
    goal_stage = 0
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        sparsity: float = field(default=0.5, metadata={"help": "share of each output's weights zeroed (unstructured)"})
        pattern: str = field(
            default="unstructured", metadata={"help": "unstructured, or n:m (e.g. 2:4): n kept of every m inputs"}
        )
        score: Literal["wanda", "magnitude"] = field(
            default="wanda", metadata={"help": "wanda: |W|·‖X‖ on calibration inputs; magnitude: |W|"}
        )
        correct: bool = field(
            default=True, metadata={"help": "least-squares refit of the kept weights to the layer's outputs"}
        )
        ridge: float = field(default=1e-3, metadata={"help": "refit ridge, relative to the mean input energy"})
        min_size: int = field(default=4096, metadata={"help": "skip layers with fewer weights (K·N)"})
        storage: Literal["auto", "dense", "sparse"] = field(
            default="auto", metadata={"help": "auto: COO (Constant sparse_value) where smaller than dense"}
        )
        levels: tuple[float, ...] = field(
            default=(),
            metadata={"help": "sparsities tried per layer (e.g. 0.3;0.5;0.7): one unit per layer and level, so "
                      "verified narrowing gives each layer the highest the budget allows (overrides sparsity)"},
        )

        def __post_init__(self) -> None:
            if not 0 < self.sparsity < 1:
                raise ValueError(f"sparsity must be in (0, 1), not {self.sparsity}")
            if self.pattern != "unstructured" and not re.fullmatch(r"\d+:\d+", self.pattern):
                raise ValueError(f"pattern must be 'unstructured' or 'n:m' such as '2:4', not {self.pattern!r}")
            if self.nm and not 0 < self.nm[0] < self.nm[1]:
                raise ValueError(f"pattern n:m needs 0 < n < m, not {self.pattern}")
            if self.score not in ("wanda", "magnitude") or self.storage not in ("auto", "dense", "sparse"):
                raise ValueError("score must be wanda or magnitude; storage auto, dense or sparse")
            if self.ridge < 0 or self.min_size < 0:
                raise ValueError("need ridge >= 0 and min_size >= 0")
            if any(not 0 < level < 1 for level in self.levels) or (self.levels and self.nm):
                raise ValueError("levels are unstructured sparsities, each in (0, 1)")

        @property
        def nm(self) -> tuple[int, int] | None:
            n, _, m = self.pattern.partition(":")
            return (int(n), int(m)) if m else None

    def __init__(self, options: WeightPruningPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[tuple[list[_Pruned], list[Skip]]] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[WeightPruningPass, ...]:
        """Size only: sparse storage, dense kernels."""
        return (cls(),) if goal == "size" else ()

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer (per layer and level with ``levels``); its sensitivity is the relative layer-output
        error on calibration data after pruning and refit, so a layer's milder levels rank first."""
        return nested_levels((Unit(p.unit, p.error, _detail(p), gain=max(p.zeroed, 1)), p.layer.name, p.sparsity)
                             for p in self._plan(model, context)[0])

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        pruned, skipped = self._plan(model, context)
        deepest: dict[str, _Pruned] = {}
        for p in (p for p in pruned if context.selects(p.unit)):
            if p.layer.name not in deepest or p.sparsity > deepest[p.layer.name].sparsity:
                deepest[p.layer.name] = p
        chosen = [p for p in pruned if deepest.get(p.layer.name) is p]
        stats = {"layers_pruned": 0, "weights_pruned": 0, "bytes_before": 0, "bytes_after": 0, "layers_stored_sparse": 0}
        if not chosen:
            return PassResult(copy_model(model), False, stats, tuple(skipped))
        out, notes = copy_model(model), []
        for p in chosen:
            before, after, storage = _store(out, p.layer.weight, p.layer.stored(p.matrix), self.options.storage)
            stats["bytes_before"] += before
            stats["bytes_after"] += after
            stats["layers_stored_sparse"] += storage == "sparse"
            notes.append(f"{_note(p)}, stored {storage} ({before} → {after} bytes)")
        stats.update(layers_pruned=len(chosen), weights_pruned=sum(p.zeroed for p in chosen))
        if stats["layers_stored_sparse"] < len(chosen):
            notes.append("weights kept dense where COO with int64 indices would be larger (density ≥ 1/3 for "
                         "float32): there the file shrinks only once compressed")
        log.info("%s: %s", self.name, stats)
        return PassResult(out, True, stats, tuple(skipped), tuple(notes))

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> tuple[list[_Pruned], list[Skip]]:
        """The pruned layers and refusals, cached by model digest: narrowing calls ``run`` once per trial."""
        return self._plans.get(model, context, lambda: _make_plan(model, context, self.options))


def _make_plan(
    model: onnx.ModelProto, context: PassContext, options: WeightPruningPass.Options
) -> tuple[list[_Pruned], list[Skip]]:
    layers, skipped = _find(model)
    eligible: list[tuple[_Layer, list[tuple[str, float]]]] = []
    for layer in layers:
        why, todo = _ineligible(layer, options), []
        for level in [] if why else sorted(options.levels) or [options.sparsity]:
            unit = level_unit(layer.name, level) if options.levels else layer.name
            short = "" if options.nm else _short(layer, level)
            skipped += [Skip(unit, short)] if short else []
            todo += [] if short else [(unit, level)]
        skipped += [Skip(layer.name, why)] if why else []
        eligible += [(layer, todo)] if todo else []
    grams: dict[_GramKey, pr.AugmentedGram] = {}
    if eligible and context.calibration is not None:
        grams = _calibrate(model, [layer for layer, _ in eligible], context)
    plan = []
    for layer, todo in eligible:
        gram = grams.get(_key(layer))
        if gram is None or gram.features != layer.matrix.shape[0] * layer.group:
            skipped.append(Skip(layer.name, f"no activations of '{layer.source}'"))
            continue
        plan += [_prune(unit, layer, gram, level, options) for unit, level in todo]
    return plan, skipped


def _prune(unit: str, layer: _Layer, gram: pr.AugmentedGram, sparsity: float, options: WeightPruningPass.Options
           ) -> _Pruned:
    """Score, mask and refit each group's block (one block unless a grouped Conv) against its Gram block."""
    w, (k, n) = layer.matrix, layer.matrix.shape
    nm, size = options.nm, n // layer.group
    result, masked = np.zeros_like(w), np.zeros_like(w)
    terms = np.zeros(3)  # squared errors masked and applied, squared output
    with _one_blas_thread():
        for g in range(layer.group):
            rows, cols = slice(g * k, (g + 1) * k), slice(g * size, (g + 1) * size)
            block, part = gram.plain[rows, rows], w[:, cols]
            norms = np.sqrt(np.maximum(np.diag(block), 0.0))
            scores = np.abs(part) if options.score == "magnitude" else pr.wanda_scores(part, norms)
            mask = pr.channel_nm_mask(scores, *nm, layer.positions) if nm else pr.magnitude_mask(scores, sparsity)
            masked[:, cols] = np.where(mask, part, 0.0)
            result[:, cols] = pr.masked_refit_batched(block, part, mask, options.ridge) if options.correct else masked[:, cols]
            terms += [pr.squared_output_error(block, part, masked[:, cols])[0],
                      *pr.squared_output_error(block, part, result[:, cols])]
    plain, error = (float(np.sqrt(t / terms[2])) if terms[2] > 0 else 0.0 for t in terms[:2])
    how = "no refit" if not options.correct else "refit did not help" if error >= plain else "refit"
    final = result if how == "refit" else masked
    zeroed = int(np.count_nonzero(w) - np.count_nonzero(final))  # a refit zeroes the weights of silent inputs
    return _Pruned(unit, layer, final, zeroed, plain, error if how == "refit" else plain, how, sparsity)


def _ineligible(layer: _Layer, options: WeightPruningPass.Options) -> str:
    k, n = layer.matrix.shape
    nm = options.nm
    if k * n < options.min_size:
        return f"{k}×{n} = {k * n} weights < min_size {options.min_size}"
    if nm and (k // layer.positions) % nm[1]:
        return f"{options.pattern} needs input channels in multiples of {nm[1]}, the layer has {k // layer.positions}"
    if nm and pr.meets_nm(layer.matrix, *nm, layer.positions):
        return f"already {options.pattern} sparse in every output"
    return ""


def _short(layer: _Layer, sparsity: float) -> str:
    """Why unstructured pruning at ``sparsity`` would change nothing in the layer, or ``""``."""
    k = layer.matrix.shape[0]
    if int(sparsity * k + 1e-9) == 0:
        return f"sparsity {sparsity:g} of {k} inputs per output prunes nothing"
    return f"already {sparsity:.0%} sparse in every output" if pr.meets_sparsity(layer.matrix, sparsity) else ""


def _find(model: onnx.ModelProto) -> tuple[list[_Layer], list[Skip]]:
    """Candidate layers of the main graph, and a ``Skip`` for every MatMul/Gemm/Conv that cannot be one."""
    graph = model.graph
    arrays = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
    overridable = set(overridable_initializers(graph))
    readers = Counter(name for node in graph.node for name in node.input if name)
    inner = subgraph_reads(graph)
    skipped = [Skip(label(node), f"inside a subgraph of {owner.op_type} '{label(owner)}': its inputs are not observed")
               for owner, sub in nested_graphs(graph) for node in sub.node if node.op_type in _LAYERS]

    def value(name: str) -> np.ndarray | None:
        if name in arrays:
            return to_array(arrays[name])
        return _constant_value(constants[name]) if name in constants else None

    layers: list[_Layer] = []
    for node in graph.node:
        if node.op_type not in _LAYERS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        found = _match(node, value(node.input[0]), value(node.input[1]))
        if isinstance(found, _Layer):
            why = (f"weight '{found.weight}' shared by {readers[found.weight]} nodes" if readers[found.weight] > 1
                   else f"weight '{found.weight}' is read inside a subgraph" if found.weight in inner
                   else f"weight '{found.weight}' is also a graph input (overridable)" if found.weight in overridable
                   else "")
            found = Skip(found.name, why) if why else found
        if isinstance(found, _Layer):
            layers.append(found)
        elif found is not None:
            skipped.append(found)
    return layers, skipped


def _match(node: onnx.NodeProto, first: np.ndarray | None, second: np.ndarray | None) -> _Layer | Skip | None:
    name, attrs = label(node), {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if first is not None and (second is not None or node.op_type != "MatMul"):
        return None if second is not None else Skip(name, f"{node.op_type} whose constant is its first input")
    if second is None and first is None:
        return Skip(name, "no constant weight (both inputs are activations)")
    at = 1 if second is not None else 0
    weight = second if second is not None else first
    assert weight is not None
    if weight.dtype.kind != "f":
        return Skip(name, f"weight dtype {weight.dtype} is not float")
    shape = tuple(weight.shape)
    common = {"name": name, "weight": node.input[at], "source": node.input[1 - at], "shape": shape, "dtype": weight.dtype}
    if node.op_type == "Conv":
        if weight.ndim < 3:
            return Skip(name, f"Conv weight is {weight.ndim}-D")
        geometry = ConvGeometry(tuple(attrs.get("kernel_shape", shape[2:])), tuple(attrs.get("strides", ())),
                                tuple(attrs.get("dilations", ())), tuple(attrs.get("pads", ())),
                                attrs.get("auto_pad", b"NOTSET").decode())
        return _Layer(**common, axis=1, matrix=weight.reshape(shape[0], -1).T.astype(np.float64), layout="conv",
                      group=int(attrs.get("group", 1)), positions=int(np.prod(shape[2:])), geometry=geometry)
    if weight.ndim != 2:
        return Skip(name, f"weight is {weight.ndim}-D, not a matrix")
    if node.op_type == "Gemm" and attrs.get("transA", 0):
        return Skip(name, "Gemm with transA=1")
    transposed = at == 0 or (node.op_type == "Gemm" and attrs.get("transB", 0))
    matrix = (weight.T if transposed else weight).astype(np.float64)
    return _Layer(**common, axis=-2 if at == 0 else -1, matrix=matrix, layout="nk" if transposed else "kn")


def _calibrate(
    model: onnx.ModelProto, layers: list[_Layer], context: PassContext
) -> dict[_GramKey, pr.AugmentedGram]:
    """One Gram matrix per (activation, channel axis or Conv geometry), reduced batch by batch (``CalibrationError``
    when onnxruntime cannot run the model)."""
    assert context.calibration is not None
    keys = sorted({_key(layer) for layer in layers}, key=repr)
    grams: dict[_GramKey, pr.AugmentedGram] = {}

    def observe(source: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            for key in (key for key in keys if key[0] == source):
                _, axis, geometry = key
                rows = patches(x, geometry) if geometry is not None else x
                grams[key] = pr.accumulate(grams.get(key), rows, axis if rows.ndim > 1 and geometry is None else -1)
        return update

    reduce_activations(model, {key[0]: observe(key[0]) for key in keys}, context.calibration, context.runtime,
                       progress=context.progress, label="weight-pruning calibration")
    return grams



def _key(layer: _Layer) -> _GramKey:
    return layer.source, layer.axis, layer.geometry


def _store(model: onnx.ModelProto, name: str, array: np.ndarray, mode: str) -> tuple[int, int, str]:
    """Put ``array`` where weight ``name`` was, dense or as a sparse Constant; bytes before and after, and how."""
    graph = model.graph
    storage = choose_storage(array, mode)
    values, indices = coo_encode(array)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(values, name),
                                       numpy_helper.from_array(indices, f"{name}_indices"), list(array.shape))
    after = values.nbytes + indices.nbytes if storage == "sparse" else array.nbytes
    for i, tensor in enumerate(graph.initializer):
        if tensor.name == name:
            if storage == "dense":
                graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
                return array.nbytes, after, storage
            del graph.initializer[i]
            taken = {n.name for n in graph.node}
            node_name = next(f"{name}_sparse_{k}" for k in range(len(taken) + 1) if f"{name}_sparse_{k}" not in taken)
            graph.node.insert(0, helper.make_node("Constant", [], [name], name=node_name, sparse_value=sparse))
            return array.nbytes, after, storage
    node = next(n for n in graph.node if n.op_type == "Constant" and list(n.output) == [name])
    old = node.attribute[0]
    before = (to_array(old.sparse_tensor.values).nbytes + to_array(
        old.sparse_tensor.indices).nbytes) if old.name == "sparse_value" else array.nbytes
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("sparse_value", sparse) if storage == "sparse"
                          else helper.make_attribute("value", numpy_helper.from_array(array, name)))
    return before, after, storage


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """The refit is thousands of mid-sized LAPACK solves: multi-threaded BLAS syncs so often on them that it runs
    several times slower than one thread (7× on a busy 2-core machine), so limit it when threadpoolctl is there."""
    return threadpool_limits(1, "blas") if threadpool_limits is not None else contextlib.nullcontext()


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return to_array(attribute.t)
        if attribute.name == "sparse_value":
            sparse = attribute.sparse_tensor
            return coo_decode(to_array(sparse.values), to_array(sparse.indices),
                              tuple(sparse.dims))
    return None


def _detail(p: _Pruned) -> str:
    k, n = p.layer.matrix.shape
    sparsity = 1 - np.count_nonzero(p.matrix) / (k * n)
    return f"{k}×{n}, sparsity {sparsity:.2f}, output error {p.error:.1e}"


def _note(p: _Pruned) -> str:
    k, n = p.layer.matrix.shape
    sparsity = 1 - np.count_nonzero(p.matrix) / (k * n)
    return (f"{p.layer.name}: {k}×{n}, sparsity {sparsity:.2f} ({p.how}), output error {p.plain:.2e} pruned → "
            f"{p.error:.2e} applied")
