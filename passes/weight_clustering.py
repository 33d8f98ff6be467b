"""Weight clustering: every large weight shares k values, stored as small indices into a float codebook.

Each float initializer that is a MatMul/Gemm/Conv/ConvTranspose weight or a Gather's data (embeddings) is replaced,
under the same name, by ``Gather(codebook, indices)``: a k-entry codebook from optimal 1-D k-means
(``graphopt_passes._math.clustering``) and one index per weight, two per byte when k ≤ 16, else one byte each.
The *file* shrinks about 8× (4-bit) or 4× (8-bit) on those tensors, while onnxruntime folds the constant index
unpacking and ``Gather`` at session creation, so the graph it runs, and its speed, are the float model's. Packed
indices are ONNX's UINT4 type when the model is already at opset 21; otherwise nibbles in a uint8 tensor unpacked by
``Cast → Div/Mod → Concat → Reshape`` (opset 11+), because upgrading a model to opset 21 makes onnxruntime miss some
of its fusions (MiniLM ran 3% slower as opset 21 with no other change). onnxruntime holds every folded value until
folding ends (microsoft/onnxruntime#28203): loading a clustered model takes about 14–18 bytes per clustered value for a
moment, which graphopt's own sessions avoid on large models by leaving that folding to run time (``graphopt.runtime``).
Keeping the tensor's name means every reader, shared or inside a subgraph, sees the rebuilt weight, so a shared
weight is clustered once. Each tensor is one unit (sensitivity: its relative reconstruction error), so the manager
keeps in float the tensors the budget cannot afford. With calibration data a 2-D MatMul/Gemm weight's indices are
chosen GPTQ-style (``compensate``): rows rounded in order against the input's Gram matrix, each row's error pushed
onto the rows still to come; its sensitivity is then the relative output error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.activations import reduce_activations
from graphopt.errors import CalibrationError, PassError, first_line
from graphopt.graph import Names, copy_model, default_opset, free_copies, overridable_initializers
from graphopt.opset import ensure_opset
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit, nested_levels
from graphopt.weights import to_array
from graphopt_passes._math.clustering import Clustering, cluster, compensated
from graphopt_passes._math.low_rank import budget_groups, gram_budget
from graphopt_passes._math.pruning import AugmentedGram, accumulate

__all__ = ["WeightClusteringPass"]

log = logging.getLogger(__name__)

_WEIGHT_SLOTS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,), "ConvTranspose": (1,), "Gather": (0,)}
_UINT4_OPSET, _UINT4_IR = 21, 10
_NIBBLES_OPSET = 10


@dataclass(frozen=True)
class _Reader:
    """The input a weight multiplies: activation ``source`` holds on ``axis`` the channels of the weight's
    ``weight_axis``, so a weight's data-aware importance is the mean square of its input channel."""

    source: str
    axis: int
    weight_axis: int
    matmul: bool = False  # a 2-D MatMul/Gemm weight: its input Gram makes GPTQ compensation possible


@dataclass(frozen=True)
class _Clustered:
    """A weight's clustering as the plan keeps it: ``stored`` holds the indices two per byte (``_nibbles``) when the
    codebook has at most 16 values, else one per byte, so a plan of every weight costs half a byte per value."""

    name: str
    unit: str
    shape: tuple[int, ...]
    codebook: np.ndarray
    relative_error: float
    stored: np.ndarray
    bytes_before: int

    @classmethod
    def of(cls, name: str, unit: str, result: Clustering, bytes_before: int) -> _Clustered:
        indices = result.indices
        stored = _nibbles(indices) if len(result.codebook) <= 16 else indices
        return cls(name, unit, tuple(indices.shape), result.codebook, result.relative_error, stored, bytes_before)

    @property
    def packable(self) -> bool:
        return len(self.codebook) <= 16

    def indices(self) -> np.ndarray:
        """One index per weight value (uint8, the weight's shape)."""
        if not self.packable:
            return self.stored
        pairs = self.stored.reshape(-1)
        flat = np.empty(2 * pairs.size, dtype=np.uint8)
        flat[0::2], flat[1::2] = pairs & np.uint8(0xF), pairs >> np.uint8(4)
        return flat[:math.prod(self.shape)].reshape(self.shape)

    def nibbles(self) -> np.ndarray:
        """The indices two per byte (``_nibbles``); only for a codebook of at most 16 values."""
        return self.stored if self.packable else _nibbles(self.stored)

    def bytes_after(self, packed: bool) -> int:
        count = math.prod(self.shape)
        return self.codebook.nbytes + ((count + 1) // 2 if packed else count)

    def note(self, packed: bool) -> str:
        return (f"{self.name}: {'×'.join(map(str, self.shape))}, k={len(self.codebook)}, relative error "
                f"{self.relative_error:.2e}, {self.bytes_before} → {self.bytes_after(packed)} bytes "
                f"({'4' if packed else '8'}-bit indices)")


class WeightClusteringPass(PassBase):
    """Share each large weight's values through a k-entry codebook (4-bit or 8-bit indices + Gather)."""

    name = "weight-clustering"
    lossless = False
    needs_data = False

    @dataclass(frozen=True)
    class Options:
        clusters: int = field(default=16, metadata={"help": "codebook size k per tensor (2…256)"})
        min_size: int = field(default=4096, metadata={"help": "skip tensors with fewer values"})
        packing: Literal["auto", "uint4", "uint8"] = field(
            default="auto", metadata={"help": "auto: 4-bit indices when clusters ≤ 16, as UINT4 at opset 21+ or packed "
                                      "nibbles below; uint4: UINT4, upgrading the model to opset 21; uint8: a byte each"}
        )
        groups: int = field(default=1024, metadata={"help": "groups of sorted values the exact k-means DP runs on"})
        steps: int = field(default=8, metadata={"help": "Lloyd refinement steps on the raw values after the DP"})
        levels: tuple[int, ...] = field(
            default=(),
            metadata={"help": "codebook sizes tried per tensor (e.g. 16;64): one unit per tensor and size, so verified "
                      "narrowing gives each tensor the smallest the budget allows (overrides clusters)"},
        )
        data_aware: bool = field(
            default=True, metadata={"help": "weigh each weight's error by the mean square of the input it multiplies, "
                                    "measured on calibration samples when given (embeddings stay unweighted)"}
        )
        compensate: bool = field(
            default=True, metadata={"help": "with calibration samples, choose a 2-D MatMul/Gemm weight's indices "
                                    "GPTQ-style: round input channels in order, pushing each one's error onto the rest "
                                    "through the input's Gram matrix"}
        )
        block: int = field(default=128, metadata={"help": "rows per lazy-update block of the compensation"})

        def __post_init__(self) -> None:
            if not all(2 <= k <= 256 for k in (self.clusters, *self.levels)):
                raise ValueError(f"clusters and levels must be in [2, 256], not {self.clusters}, {self.levels}")
            if self.packing not in ("auto", "uint4", "uint8"):
                raise ValueError(f"packing must be auto, uint4 or uint8, not {self.packing!r}")
            if self.min_size < 0 or self.groups < 2 or self.steps < 0 or self.block < 1:
                raise ValueError("need min_size >= 0, groups >= 2, steps >= 0 and block >= 1")

    def __init__(self, options: WeightClusteringPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[tuple[list[_Clustered], list[Skip]]] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[WeightClusteringPass, ...]:
        """Size only: onnxruntime folds the codebook at load, so the speed is the same."""
        return (cls(),) if goal == "size" else ()

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per tensor (per tensor and codebook size with ``levels``); sensitivity = its relative
        reconstruction error (weighted by input importance when data-aware), so a tensor's larger codebooks rank first."""
        packed = self.options.packing != "uint8"
        return nested_levels((Unit(c.unit, c.relative_error,
                                   f"{'×'.join(map(str, c.shape))}, k={len(c.codebook)}",
                                   gain=max(c.bytes_before - c.bytes_after(packed and c.packable), 1)),
                              c.name, -len(c.codebook))
                             for c in self._plan(model, context)[0])

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        planned, skipped = self._plan(model, context)
        smallest: dict[str, _Clustered] = {}
        for c in (c for c in planned if context.selects(c.unit)):
            if c.name not in smallest or len(c.codebook) < len(smallest[c.name].codebook):
                smallest[c.name] = c
        chosen = [c for c in planned if smallest.get(c.name) is c]
        stats = {"tensors_clustered": 0, "bytes_before": 0, "bytes_after": 0}
        if not chosen:
            return PassResult(copy_model(model), False, stats, tuple(skipped))
        notes: list[str] = []
        packed = self.options.packing != "uint8" and any(c.packable for c in chosen)
        uint4 = packed and (self.options.packing == "uint4" or default_opset(model) >= _UINT4_OPSET)
        if packed and not uint4 and default_opset(model) < _NIBBLES_OPSET:
            packed = False
            notes.append(f"indices kept as bytes: unpacking nibbles needs opset {_NIBBLES_OPSET} (Mod, Slice inputs)")
        out = model
        if uint4:
            try:
                out, upgraded = ensure_opset(model, _UINT4_OPSET)
                notes += [upgraded] if upgraded else []
            except PassError as e:
                uint4 = False
                notes.append(f"indices packed as uint8 nibbles: UINT4 needs opset {_UINT4_OPSET}, {first_line(e)}")
        out = copy_model(out)
        _rewrite(out, chosen, packed, uint4)
        stats.update(tensors_clustered=len(chosen), bytes_before=sum(c.bytes_before for c in chosen),
                     bytes_after=sum(c.bytes_after(packed and c.packable) for c in chosen))
        notes += [c.note(packed and c.packable) for c in chosen]
        log.info("%s: %s", self.name, stats)
        return PassResult(out, True, stats, tuple(skipped), tuple(notes))

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> tuple[list[_Clustered], list[Skip]]:
        """Clustered tensors and refusals, cached by model digest: narrowing calls ``run`` once per trial."""
        return self._plans.get(model, context, lambda: _make_plan(model, context, self.options))


def _make_plan(model: onnx.ModelProto, context: PassContext, options: WeightClusteringPass.Options
               ) -> tuple[list[_Clustered], list[Skip]]:
    graph = model.graph
    arrays = {t.name: t for t in graph.initializer}
    overridable = set(overridable_initializers(graph))
    constants = _constant_values(graph, arrays.keys() - overridable)
    readers: dict[str, list[_Reader | None]] = {}
    skipped = []
    for node in graph.node:
        for slot in _WEIGHT_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            name = node.input[slot] if slot < len(node.input) else ""
            if name not in arrays or (name in readers and not readers[name]):
                continue
            why = _refusal(node, arrays[name], name in overridable, constants, options)
            if why:
                skipped.append(Skip(name, why))
                readers[name] = []
            else:
                readers.setdefault(name, []).append(_reader(node, slot, len(arrays[name].dims)))
    chosen = [name for name, found in readers.items() if found]
    calibrated = (options.data_aware or options.compensate) and context.calibration is not None \
        and context.calibration.n_samples > 0

    def gram_bytes(name: str) -> dict[tuple[str, int], int]:
        dims = arrays[name].dims
        return {(r.source, r.axis): 8 * dims[r.weight_axis] ** 2 for r in readers[name]
                if r is not None and r.matmul and options.compensate}

    planned: list[_Clustered] = []
    budget = gram_budget(sum(4 * math.prod(arrays[name].dims) for name in chosen))  # as float32
    for group in budget_groups(chosen, gram_bytes, budget):  # one calibration run each, dropped before the next
        importance: dict[tuple[str, int], np.ndarray] = {}
        grams: dict[tuple[str, int], np.ndarray] = {}
        if calibrated:
            found = [r for name in group for r in readers[name] if r is not None]
            wanted = {(r.source, r.axis) for r in found} if options.data_aware else set()
            gram_keys = {(r.source, r.axis) for r in found if r.matmul} if options.compensate else set()
            try:
                importance, grams = _statistics(model, wanted | gram_keys, gram_keys, context)
            except CalibrationError as e:  # clustering needs no data: it goes on without the weighting
                skipped.append(Skip("calibration", f"{e}; clustered without calibration data"))
                calibrated = False
            importance = importance if options.data_aware else {}
            free_copies(model)  # what the calibration session and its batches held, before clustering takes more
        planned += _cluster_group(group, arrays, readers, importance, grams, options)
    return planned, skipped


def _cluster_group(names: list[str], arrays: dict[str, onnx.TensorProto], readers: dict[str, list[_Reader | None]],
                   importance: dict[tuple[str, int], np.ndarray], grams: dict[tuple[str, int], np.ndarray],
                   options: WeightClusteringPass.Options) -> list[_Clustered]:
    """The clustered weights ``names``, each weighted by its readers' ``importance`` and compensated through its
    input's Gram where it has one."""
    planned = []
    for name in names:
        values = to_array(arrays[name])
        weights = _weights(values.shape, readers[name], importance)
        only = readers[name][0] if len(readers[name]) == 1 else None
        gram = grams.get((only.source, only.axis)) if only is not None and only.matmul else None
        for k in sorted(set(options.levels), reverse=True) or [options.clusters]:
            result = cluster(values, k, weights, groups=options.groups, steps=options.steps)
            if only is not None and gram is not None and gram.shape == (values.shape[only.weight_axis],) * 2 \
                    and np.all(np.isfinite(gram)):
                result = compensated(result, values, gram, only.weight_axis, options.block)
            unit = f"{name}@{k}" if options.levels else name
            planned.append(_Clustered.of(name, unit, result, values.nbytes))
    return planned


def _reader(node: onnx.NodeProto, slot: int, rank: int) -> _Reader | None:
    """What the weight in ``slot`` of ``node`` multiplies, when a per-channel importance applies to it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    other = node.input[1 - slot] if node.op_type in ("MatMul", "Gemm") else node.input[0]
    if node.op_type == "MatMul" and rank >= 2:
        return _Reader(other, -1, -2, rank == 2) if slot == 1 else _Reader(other, -2, -1, rank == 2)
    if node.op_type == "Gemm" and rank == 2:
        trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
        if slot == 1:
            return _Reader(other, 0 if trans_a else -1, 1 if trans_b else 0, True)
        return _Reader(other, 1 if trans_b else 0, 0 if trans_a else 1, True)
    if node.op_type in ("Conv", "ConvTranspose") and attrs.get("group", 1) == 1 and rank >= 3:
        return _Reader(other, 1, 1 if node.op_type == "Conv" else 0)
    return None


def _statistics(model: onnx.ModelProto, wanted: set[tuple[str, int]], gram_keys: set[tuple[str, int]],
                context: PassContext) -> tuple[dict[tuple[str, int], np.ndarray], dict[tuple[str, int], np.ndarray]]:
    """Mean square per channel of each wanted (activation, axis), and the Gram ``XᵀX/n`` of those in ``gram_keys``,
    streamed over the calibration samples (``CalibrationError`` when onnxruntime cannot run the model)."""
    assert context.calibration is not None
    sums: dict[tuple[str, int], list[np.ndarray | int]] = {}
    gram_sums: dict[tuple[str, int], AugmentedGram] = {}

    def observe(source: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            for key in (key for key in wanted if key[0] == source):
                if key in gram_keys:
                    gram_sums[key] = accumulate(gram_sums.get(key), x, key[1])
                    continue
                rows = np.moveaxis(np.asarray(x, dtype=np.float64), key[1], -1).reshape(-1, x.shape[key[1]])
                total, count = sums.get(key, [np.zeros(rows.shape[1]), 0])
                sums[key] = [total + np.einsum("ij,ij->j", rows, rows), int(count) + rows.shape[0]]
        return update

    sources = {source for source, _ in wanted}
    reduce_activations(model, {s: observe(s) for s in sources}, context.calibration, context.runtime,
                       progress=context.progress, label="weight-clustering calibration")
    importance = {key: np.asarray(total) / max(int(count), 1) for key, (total, count) in sums.items()}
    grams = {key: g.plain / max(g.count, 1) for key, g in gram_sums.items()}
    importance.update({key: np.diag(g).copy() for key, g in grams.items()})
    return importance, grams


def _weights(shape: tuple[int, ...], readers: list[_Reader | None], importance: dict[tuple[str, int], np.ndarray]
             ) -> np.ndarray | None:
    """Per-value error weights of a weight tensor: its only reader's input importance, broadcast; else ``None``."""
    if len(readers) != 1 or readers[0] is None or (readers[0].source, readers[0].axis) not in importance:
        return None
    reader = readers[0]
    channel = importance[(reader.source, reader.axis)]
    axis = reader.weight_axis % len(shape)
    if channel.shape != (shape[axis],) or not np.all(np.isfinite(channel)) or channel.max() <= 0:
        return None
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(channel.reshape(view), shape)


def _constant_values(graph: onnx.GraphProto, initializers: set[str]) -> set[str]:
    """Values computed from ``initializers`` alone (nodes in topological order, as ONNX requires)."""
    constants = set(initializers)
    for node in graph.node:
        if all(i in constants for i in node.input if i) and not any(a.g.node or a.graphs for a in node.attribute):
            constants.update(node.output)
    return constants


def _refusal(node: onnx.NodeProto, tensor: onnx.TensorProto, overridable: bool, constants: set[str],
             options: WeightClusteringPass.Options) -> str:
    """Why initializer ``tensor`` read by ``node`` cannot be clustered, or ``""``."""
    count = math.prod(tensor.dims)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in constants:
        return "already a codebook (a Gather with constant indices)"
    if dtype.kind != "f":
        return f"dtype {dtype} is not float"
    if overridable:
        return "also a graph input (overridable)"
    if count < options.min_size:
        return f"{count} values < min_size {options.min_size}: too small to gain"
    if count <= max((options.clusters, *options.levels)):
        return f"{count} values, no more than the codebook size"
    return ""


def _rewrite(model: onnx.ModelProto, chosen: list[_Clustered], packed: bool, uint4: bool) -> None:
    """Replace each chosen initializer by codebook + indices initializers and constant nodes that rebuild it under
    its own name: ``Gather(codebook, Cast(indices))``, packed nibbles unpacked in between unless stored as UINT4."""
    graph = model.graph
    fresh = Names.of(graph).fresh
    names = {c.name for c in chosen}

    def constant(base: str, value: np.ndarray) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], base: str, **attrs: int) -> str:
        output = fresh(base)
        made = helper.make_node(op, inputs, [output], name=fresh(f"{base}_{op.lower()}"))
        made.attribute.extend(helper.make_attribute(key, value) for key, value in attrs.items())
        nodes.append(made)
        return output

    for position in reversed(range(len(graph.initializer))):  # in place: re-adding the kept ones would copy them all
        if graph.initializer[position].name in names:
            del graph.initializer[position]
    nodes: list[onnx.NodeProto] = []
    sixteen = constant("clustering_sixteen", np.array(16, np.int32)) if packed and not uint4 else ""
    for c in chosen:
        codebook = constant(f"{c.name}_codebook", c.codebook)
        if not (packed and c.packable):
            index = node("Cast", [constant(f"{c.name}_indices", c.indices())],
                         f"{c.name}_index", to=onnx.TensorProto.INT32)
        elif uint4:
            indices = fresh(f"{c.name}_indices")
            graph.initializer.append(_uint4(c.nibbles(), c.shape, indices))
            index = node("Cast", [indices], f"{c.name}_index", to=onnx.TensorProto.INT32)
        else:
            pairs = node("Cast", [constant(f"{c.name}_indices", c.nibbles())], f"{c.name}_pairs",
                         to=onnx.TensorProto.INT32)
            pairs = node("Concat", [node("Mod", [pairs, sixteen], f"{c.name}_low"),
                                    node("Div", [pairs, sixteen], f"{c.name}_high")], f"{c.name}_unpacked", axis=1)
            count = math.prod(c.shape)
            if count % 2:
                flat = node("Reshape", [pairs, constant(f"{c.name}_flat", np.array([-1], np.int64))], f"{c.name}_flat")
                pairs = node("Slice", [flat, constant(f"{c.name}_start", np.array([0], np.int64)),
                                       constant(f"{c.name}_stop", np.array([count], np.int64))], f"{c.name}_cut")
            index = node("Reshape", [pairs, constant(f"{c.name}_dims", np.array(c.shape, np.int64))], f"{c.name}_index")
        nodes.append(helper.make_node("Gather", [codebook, index], [c.name], name=fresh(f"{c.name}_gather")))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    if uint4:
        model.ir_version = max(model.ir_version, _UINT4_IR)


def _nibbles(indices: np.ndarray) -> np.ndarray:
    """``indices`` (< 16) two per byte as a ``(ceil(n / 2), 1)`` uint8 array, low nibble first."""
    flat = indices.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).reshape(-1, 1)


def _uint4(nibbles: np.ndarray, shape: tuple[int, ...], name: str) -> onnx.TensorProto:
    """Indices packed by ``_nibbles`` as a UINT4 tensor of ``shape`` (ONNX's layout: two per byte, low nibble first)."""
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.UINT4, dims=list(shape))
    tensor.raw_data = nibbles.tobytes()
    return tensor
