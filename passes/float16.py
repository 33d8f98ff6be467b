"""float16: half-precision compute with float32 inputs and outputs, or float16 weight storage (``mode=weights``).

``mode=compute`` turns every float tensor of the convertible nodes into float16: their constants are stored as
float16, attributes that carry a dtype (Cast ``to``, ConstantOfShape ``value``, Constant, Random* ``dtype``) follow,
and one Cast is inserted where a float32 tensor enters an fp16 region or an fp16 tensor leaves it (graph inputs and
outputs stay float32). A node stays float32, with its reason, when its op is in the block list (ops whose internals
overflow or lose precision in float16: exponentials, reductions, Softmax), when the runtime has no float16 kernel for
it (``kernels=runtime``: onnxruntime's CPU EP would otherwise insert its own Casts around it), when a constant it
reads overflows or rounds badly, when its outputs' calibration range comes within ``margin`` of 65504, or when it
holds a subgraph or belongs to another domain. Regions of pure data movement without a constant worth halving are
left alone: their Casts would cost more than they save. Each node is one unit, so verified narrowing keeps in
float32 the nodes that break the budget; a unit's sensitivity is its outputs' float16 rounding loss on calibration.

``mode=weights`` stores each float32 initializer as float16 behind a Cast to float32: the file halves, and
onnxruntime folds the Cast at load, so compute and latency stay as they were. One unit per tensor.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.activations import reduce_activations
from graphopt.errors import CalibrationError
from graphopt.graph import (
    Names,
    copy_model,
    default_opset,
    infer_shapes,
    label,
    overridable_initializers,
    subgraph_reads,
)
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, SpeedCheck, Unit
from graphopt.weights import to_array
from graphopt_passes._math import fp16

__all__ = ["BLOCK_LIST", "Float16Pass"]

log = logging.getLogger(__name__)

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
BLOCK_LIST = ("Exp", "Log", "Pow", "Softmax", "LogSoftmax", "CumSum", "Range", "ReduceSum", "ReduceSumSquare",
              "ReduceL1", "ReduceL2", "ReduceMean", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp", "Einsum")
_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather",
             "GatherElements", "GatherND", "Expand", "Identity", "Shape", "Size", "Cast", "CastLike", "Constant",
             "ConstantOfShape", "Tile", "Pad", "Dropout"}
_BIT_LEVEL = {"BitCast"}  # float16 input bits would change what the output means (or its type check)
_DTYPED = {"RandomNormal", "RandomUniform"}  # their output defaults to float32 when the dtype attribute is absent


@dataclass(frozen=True)
class _Plan:
    convertible: dict[int, Unit]  # node index → unit
    float_nodes: int  # nodes that read or write a float32 tensor
    skipped: tuple[Skip, ...]
    notes: tuple[str, ...] = ()


class Float16Pass(PassBase):
    """Half precision: fp16 compute with fp32 inputs/outputs and Casts only at region borders, or fp16 weights."""

    name = "float16"

    @dataclass(frozen=True)
    class Options:
        mode: Literal["compute", "weights"] = field(
            default="compute", metadata={"help": "compute: fp16 regions between Casts; weights: fp16 storage + Cast"})
        kernels: Literal["runtime", "any"] = field(
            default="runtime", metadata={"help": "runtime: ops without a float16 kernel in onnxruntime's CPU EP stay "
                                         "float32; any: convert them too (for fp16 hardware)"})
        block: tuple[str, ...] = field(default=BLOCK_LIST, metadata={"help": "op types always kept float32"})
        margin: float = field(default=4.0, metadata={"help": "head-room below 65504 for calibration ranges"})
        max_loss: float = field(default=1e-3, metadata={"help": "largest relative fp16 rounding loss of a tensor"})
        min_size: int = field(default=16, metadata={"help": "weights mode: smaller initializers stay float32"})
        samples: int = field(default=64, metadata={"help": "compute mode: calibration samples whose ranges are "
                                                     "checked (0: all)"})
        speed_check: Literal["off", "note", "decline"] = field(
            default="off", metadata={"help": "compute mode: time fp16 against fp32; decline when it is not faster"})

        def __post_init__(self) -> None:
            if self.mode not in ("compute", "weights") or self.kernels not in ("runtime", "any"):
                raise ValueError("mode must be compute or weights; kernels runtime or any")
            if self.speed_check not in ("off", "note", "decline"):
                raise ValueError("speed_check must be off, note or decline")
            if self.margin < 1 or self.max_loss <= 0 or self.min_size < 0 or self.samples < 0:
                raise ValueError("need margin >= 1, max_loss > 0 and min_size >= 0")

    def __init__(self, options: Float16Pass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[_Plan] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[Float16Pass, ...]:
        """Float16 compute for latency, float16 storage for size."""
        return (cls(cls.Options(mode="compute" if goal == "latency" else "weights")),)

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        return tuple(self._plan(model, context).convertible.values())

    def serves(self) -> frozenset[Goal]:
        return frozenset({"latency"} if self.options.mode == "compute" else {"size"})

    def speed_check(self) -> SpeedCheck:
        return SpeedCheck(self.options.speed_check if self.options.mode == "compute" else "off",
                          candidate="fp16", baseline="the fp32")

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        plan = self._plan(model, context)
        chosen = {i for i, unit in plan.convertible.items() if context.selects(unit.name)}
        stats: dict[str, int | float] = {"nodes_fp16": 0, "nodes_fp32": plan.float_nodes, "casts_inserted": 0,
                                         "bytes_before": _weight_bytes(model), "bytes_after": _weight_bytes(model)}
        skipped = list(plan.skipped)
        if self.options.mode == "compute":
            chosen, dropped = _worth_it(model, chosen, self.options.min_size)
            skipped += [Skip(label(model.graph.node[i]), "data movement only: its Casts would cost more than they "
                             "save") for i in sorted(dropped)]
        if not chosen:
            return PassResult(copy_model(model), False, stats, tuple(skipped), plan.notes)
        out, casts = (_convert(model, chosen) if self.options.mode == "compute"
                      else _store_weights(model, {plan.convertible[i].name for i in chosen}))
        fp16_nodes = len(chosen) if self.options.mode == "compute" else 0
        stats.update(nodes_fp16=fp16_nodes, nodes_fp32=plan.float_nodes - fp16_nodes, casts_inserted=casts,
                     bytes_after=_weight_bytes(out))
        log.info("%s: %s", self.name, stats)
        return PassResult(out, True, stats, tuple(skipped), plan.notes)

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> _Plan:
        """Convertible nodes (or tensors) and refusals, cached by model digest: narrowing calls ``run`` per trial."""
        def make() -> _Plan:
            if self.options.mode == "weights":
                return _plan_weights(model, self.options)
            return _plan_compute(model, context, self.options)

        return self._plans.get(model, context, make)


@functools.cache
def fp16_kernels(provider: str = "CPUExecutionProvider") -> frozenset[tuple[str, str, int]]:
    """(domain, op, first opset) of every kernel ``provider`` registers for float16 tensors, from onnxruntime's
    kernel registry; empty when this onnxruntime does not expose it (then every op counts as kernel-less)."""
    try:
        from onnxruntime.capi import _pybind_state
        defs = _pybind_state.get_all_opkernel_def()
    except (ImportError, AttributeError):
        return frozenset()
    return frozenset((d.domain or "", d.op_name, d.version_range[0]) for d in defs if d.provider == provider
                     and any("tensor(float16)" in allowed for allowed in d.type_constraints.values()))


def _has_kernel(op: str, opset: int) -> bool:
    return any(domain == "" and name == op and since <= opset for domain, name, since in fp16_kernels())


def _kernel_refusal(node: onnx.NodeProto) -> str:
    """Why onnxruntime's CPU EP fails at run time on this float16 node although it registers a float16 kernel."""
    reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
    if node.op_type in ("ScatterElements", "ScatterND") and reduction != "none":
        return f"onnxruntime's CPU EP has no float16 {node.op_type} with reduction '{reduction}'"
    return ""


def _plan_weights(model: onnx.ModelProto, options: Float16Pass.Options) -> _Plan:
    overridable = set(overridable_initializers(model.graph))
    units, skipped, small = {}, [], 0
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type != FLOAT:
            continue
        values = to_array(tensor)
        why = ("also a graph input (overridable)" if tensor.name in overridable
               else fp16.storage_reason(values, options.max_loss))
        if why:
            skipped.append(Skip(tensor.name, why))
        elif values.size < options.min_size:
            small += 1
        else:
            units[i] = Unit(tensor.name, fp16.relative_loss(values), f"{values.size} values")
    notes = (f"{small} float32 initializers under min_size {options.min_size} kept float32",) if small else ()
    return _Plan(units, 0, tuple(skipped), notes)


def _plan_compute(model: onnx.ModelProto, context: PassContext, options: Float16Pass.Options) -> _Plan:
    graph, opset = model.graph, default_opset(model)
    types = _types(model)
    overridable = set(overridable_initializers(graph))
    constants = {t.name: t for t in graph.initializer if t.name not in overridable}
    candidates, skipped, float_nodes = {}, [], 0
    for i, node in enumerate(graph.node):
        names = [n for n in [*node.input, *node.output] if n]
        unknown = [n for n in names if n not in types]
        if not unknown and FLOAT not in {types[n] for n in names}:
            continue
        float_nodes += 1
        constant_reasons = [f"constant '{n}': {r}" for n in node.input if n in constants
                            and constants[n].data_type == FLOAT
                            for r in [fp16.storage_reason(to_array(constants[n]), options.max_loss)] if r]
        why = (f"dtype of '{unknown[0]}' unknown" if unknown
               else f"{node.domain} op" if node.domain not in ("", "ai.onnx")
               else "holds a subgraph: left float32" if any(a.g.node or a.graphs for a in node.attribute)
               else f"{node.op_type} is in the block list (overflows or loses precision in float16)"
               if node.op_type in options.block
               else f"{node.op_type} reinterprets the bits of its input: float16 would change them"
               if node.op_type in _BIT_LEVEL
               else f"onnxruntime's CPU EP has no float16 {node.op_type} kernel"
               if options.kernels == "runtime" and node.op_type != "Constant" and not _has_kernel(node.op_type, opset)
               else _kernel_refusal(node) if options.kernels == "runtime" and _kernel_refusal(node)
               else next(iter(constant_reasons), "")
               or _attribute_reason(node, options.max_loss)
               or next((f"{n}: {types[n]} is neither float32 nor integer" for n in names
                        if types[n] in (TensorProto.DOUBLE, TensorProto.BFLOAT16, HALF)), ""))
        if why:
            skipped.append(Skip(label(node), why))
        else:
            candidates[i] = node
    notes: list[str] = []
    ranges: dict[str, fp16.RangeStats] = {}
    outputs = sorted({o for node in candidates.values() for o in node.output if o and types.get(o) == FLOAT})
    if candidates and context.calibration is not None and outputs:
        ranges = {name: fp16.RangeStats() for name in outputs}
        data = context.calibration
        if 0 < options.samples < data.n_samples:
            data = data.subset(np.arange(options.samples))
        try:
            reduce_activations(model, {n: ranges[n].update for n in outputs}, data, context.runtime,
                               progress=context.progress, label="float16 ranges")
        except CalibrationError as e:  # the ranges refine the plan; without them the budget still judges it
            notes.append(f"calibration failed, activation ranges unchecked: {e}")
            ranges = {}
    elif candidates:
        notes.append("no calibration samples: activation ranges unchecked")
    units = {}
    for i, node in candidates.items():
        seen = [ranges[o] for o in node.output if o in ranges]
        why = next((r for r in (fp16.range_reason(s, options.margin, options.max_loss) for s in seen) if r), "")
        if why:
            skipped.append(Skip(label(node), why))
            continue
        loss = max([0.0] + [s.loss for s in seen] + [fp16.relative_loss(to_array(constants[n]))
                                           for n in node.input if n in constants and constants[n].data_type == FLOAT])
        units[i] = Unit(f"{label(node)}#{i}", loss, f"{node.op_type}, fp16 rounding loss {loss:.1e}")
    return _Plan(units, float_nodes, tuple(skipped), tuple(notes))


def _attribute_reason(node: onnx.NodeProto, max_loss: float) -> str:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            why = fp16.storage_reason(to_array(attribute.t), max_loss)
            if why:
                return f"attribute {attribute.name}: {why}"
        if node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
            why = fp16.storage_reason(np.asarray(helper.get_attribute_value(attribute)), max_loss)
            if why:
                return f"attribute {attribute.name}: {why}"
        if attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
            return "sparse constant: left float32"
    return ""


def _worth_it(model: onnx.ModelProto, chosen: set[int], min_size: int) -> tuple[set[int], set[int]]:
    """``chosen`` split into nodes of regions worth converting (an arithmetic op, or a float constant of at least
    ``min_size`` values) and the others; regions are the chosen nodes connected through their tensors."""
    nodes = model.graph.node
    parent = {i: i for i in chosen}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {o: i for i in chosen for o in nodes[i].output if o}
    for i in chosen:
        for name in nodes[i].input:
            if name in producer:
                parent[find(i)] = find(producer[name])
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == FLOAT}
    worthy = {find(i) for i in chosen if nodes[i].op_type not in _MOVEMENT
              or any(sizes.get(n, 0) >= min_size for n in nodes[i].input)}
    kept = {i for i in chosen if find(i) in worthy}
    return kept, chosen - kept


def _convert(model: onnx.ModelProto, chosen: set[int]) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with the ``chosen`` nodes in float16 and a Cast wherever a tensor crosses a border."""
    out = copy_model(model)
    graph = out.graph
    types = _types(model)
    fresh = Names.of(graph).fresh
    readers: dict[str, set[int]] = defaultdict(set)
    for i, node in enumerate(graph.node):
        for name in node.input:
            readers[name].add(i)
    pinned = {o.name for o in graph.output} | subgraph_reads(graph)  # must stay float32 under their own name
    initializers = {t.name: k for k, t in enumerate(graph.initializer)}
    inputs = {v.name for v in graph.input}
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    half: dict[str, str] = {}  # float32 tensor → its float16 name
    casts_first: list[onnx.NodeProto] = []
    casts_after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for i in sorted(chosen):
        for k, name in enumerate(graph.node[i].output):
            if name and types.get(name) == FLOAT:
                if name in pinned or readers[name] - chosen:
                    half[name] = fresh(f"{name}__fp16")
                    casts_after[i].append(helper.make_node("Cast", [half[name]], [name], fresh(f"{name}__to_fp32"),
                                                           to=FLOAT))
                    graph.node[i].output[k] = half[name]
                else:
                    half[name] = name
    for i in sorted(chosen):
        node = graph.node[i]
        for k, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            if name not in half:
                if name in initializers and name not in inputs:
                    tensor = graph.initializer[initializers[name]]
                    array = fp16.to_float16(to_array(tensor))
                    if readers[name] <= chosen and name not in pinned:
                        half[name] = name
                        tensor.CopyFrom(numpy_helper.from_array(array, name))
                    else:
                        half[name] = fresh(f"{name}__fp16")
                        graph.initializer.append(numpy_helper.from_array(array, half[name]))
                else:
                    half[name] = fresh(f"{name}__fp16")
                    cast = helper.make_node("Cast", [name], [half[name]], fresh(f"{name}__to_fp16"), to=HALF)
                    (casts_after[producer[name]] if name in producer else casts_first).append(cast)
            node.input[k] = half[name]
        _halve_attributes(node)
    nodes = list(casts_first)
    for i, node in enumerate(graph.node):
        nodes += [node, *casts_after[i]]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return infer_shapes(out), len(casts_first) + sum(len(c) for c in casts_after.values())


def _halve_attributes(node: onnx.NodeProto) -> None:
    """Attributes that carry a float32 dtype or value, now float16."""
    for k, attribute in enumerate(node.attribute):
        if attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == FLOAT:
            attribute.i = HALF
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            value = fp16.to_float16(to_array(attribute.t))
            attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
        elif node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
            value = fp16.to_float16(np.asarray(helper.get_attribute_value(attribute), dtype=np.float32))
            node.attribute[k].CopyFrom(helper.make_attribute("value", numpy_helper.from_array(value)))
    names = {a.name for a in node.attribute}
    if node.op_type == "ConstantOfShape" and "value" not in names:
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
    if node.op_type in _DTYPED and "dtype" not in names:
        node.attribute.append(helper.make_attribute("dtype", HALF))


def _store_weights(model: onnx.ModelProto, names: set[str]) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with initializers ``names`` stored as float16 behind a Cast to float32."""
    out = copy_model(model)
    graph = out.graph
    taken = {n for node in graph.node for n in [*node.input, *node.output, node.name]} | {
        t.name for t in graph.initializer}
    casts = []
    for tensor in graph.initializer:
        if tensor.name in names:
            stored = next(f"{tensor.name}__fp16{k or ''}" for k in range(len(taken) + 1)
                          if f"{tensor.name}__fp16{k or ''}" not in taken)
            taken.add(stored)
            casts.append(helper.make_node("Cast", [stored], [tensor.name], f"{stored}__cast", to=FLOAT))
            tensor.CopyFrom(numpy_helper.from_array(fp16.to_float16(to_array(tensor)), stored))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return out, len(casts)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every main-graph tensor that shape inference or the graph itself states."""
    inferred = infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.output, *inferred.value_info]
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            attribute = node.attribute[0] if node.attribute else None
            if attribute is not None and attribute.type == onnx.AttributeProto.TENSOR:
                types[node.output[0]] = attribute.t.data_type
            elif attribute is not None and attribute.name in ("value_float", "value_floats"):
                types[node.output[0]] = FLOAT
    return types


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = sum(to_array(t).nbytes for t in model.graph.initializer)
    return total + sum(to_array(a.t).nbytes for n in model.graph.node if n.op_type == "Constant"
                       for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
