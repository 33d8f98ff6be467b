"""Channel structure of a graph: which layer's output channels reach which layers, and how to remove some of them.

A *channel group* is one producer layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight), the tree of
channel-preserving ops its output flows through (activations, BatchNormalization, per-channel arithmetic, pooling,
depthwise Conv, a provable Flatten/Reshape, GELU's product of two chain tensors) and the layers that read the result
(Gemm, MatMul, Conv, ConvTranspose). Channel k of the producer only ever meets channel k (or the block of rows it
flattens into) downstream, so removing it means slicing the producer's weights, each per-channel parameter of the
chain and the matching input rows of every consumer. When the removed channel carried a known constant, the
consumers add its contribution to their bias, which keeps the rewrite exact; a lossy rewrite (pruning) instead
hands each consumer a refit of its weights. Anything the analysis cannot prove (a Concat, a graph output, a
subgraph reader) refuses the whole group with a ``Skip``.

A residual ``Add`` of two chains joins their producers: channel k of one branch is added to channel k of the other,
so a channel can only leave both. With ``residual=True`` the analysis follows the other operand of such an Add back to
the layers producing it and traces them as one *residual group* (a dependency group, as Torch-Pruning calls it): every
block of a ResNet or MobileNet stage writing into one stream. Removing a channel there is never exact, so only a
caller that refits the consumers (pruning) asks for residual groups. Zero-weight elimination, dead-neuron removal and
pruning differ only in how they choose the channels and their values. Values assume finite inputs: a zero weight
times NaN is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.graph import Scope, constant_array, label
from graphopt.pass_base import Skip

__all__ = [
    "ChannelGroup",
    "Layout",
    "Link",
    "Lost",
    "Producer",
    "Refit",
    "Values",
    "constant_channels",
    "constant_input",
    "consumer_values",
    "find_channel_groups",
    "match_producer",
    "removable_channels",
    "remove_channels",
]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Lost:
    """A constant channel's value lost on its way to a consumer (an op that mixes it with padding), and why."""

    reason: str


Values = dict[int, "np.ndarray | Lost"]  # channel -> per-row values (float64), or why its value is unknown here
Refit = Callable[["Link", np.ndarray, list[int]], tuple[np.ndarray, np.ndarray]]
"""(consumer, its weight as the float64 K×N matrix of ``x·W`` — a Conv kernel flattened to (C·k₁·…)×N, channel-major
rows —, the kept channels) → (the kept rows, refitted, and the change of the consumer's bias)."""

_UNARY: dict[str, Callable[[np.ndarray, Mapping], np.ndarray]] = {
    "Relu": lambda v, a: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, a: np.where(v >= 0, v, a.get("alpha", 0.01) * v),
    "Elu": lambda v, a: np.where(v >= 0, v, a.get("alpha", 1.0) * np.expm1(v)),
    "Sigmoid": lambda v, a: 1.0 / (1.0 + np.exp(-v)),
    "HardSigmoid": lambda v, a: np.clip(a.get("alpha", 0.2) * v + a.get("beta", 0.5), 0.0, 1.0),
    "Tanh": lambda v, a: np.tanh(v),
    "Softplus": lambda v, a: np.logaddexp(0.0, v),
    "Neg": lambda v, a: -v,
    "Erf": lambda v, a: _erf(v),
    "Gelu": lambda v, a: (0.5 * v * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
                          if a.get("approximate", "none") == "tanh" else 0.5 * v * (1.0 + _erf(v / math.sqrt(2)))),
}
_POOLS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_CONSUMERS = {"Gemm", "MatMul", "Conv", "ConvTranspose"}


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(v)


class _Refuse(Exception):
    """A group the analysis cannot prove safe; the message is the ``Skip`` reason."""


@dataclass(frozen=True)
class Layout:
    """Where channels live in a tensor: ``axis`` counted from the end (broadcasting keeps it), ``block``
    consecutive entries per channel along it (more than one after a Flatten), and the rank when known."""

    axis: int
    block: int = 1
    rank: int | None = None

    @property
    def at_axis_one(self) -> bool:
        """Whether channels are the positive axis 1 (NCHW, or [N, rows]), as BatchNorm, pools and Conv need."""
        return self.rank is not None and self.axis == 1 - self.rank

    def rows(self, channels: Sequence[int]) -> np.ndarray:
        """The indices along ``axis`` that ``channels`` occupy, in order."""
        base = np.asarray(channels, dtype=np.int64)[:, None] * self.block
        return (base + np.arange(self.block, dtype=np.int64)).reshape(-1)


@dataclass(frozen=True, eq=False)
class Producer:
    """A layer whose output channels can be removed: its weight (input 1) holds them along ``weight_axis``."""

    node: gs.Node
    channels: int
    weight_axis: int
    layout: Layout


BOTH = -1


@dataclass(frozen=True, eq=False)
class Link:
    """A node of a group reading the chain at input ``index``, where the channels have ``layout``; ``index`` is
    ``BOTH`` for a binary op whose two inputs are both in the chain (the ``x·Φ(x)`` of a decomposed GELU)."""

    node: gs.Node
    layout: Layout
    index: int = 0


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Producers' output channels, the channel-preserving ops they pass (in order) and the layers reading them.

    One producer, or with ``residual=True`` every producer whose output meets the others' at a residual Add: they
    share channel k, and the group is named after the first in graph order."""

    producers: tuple[Producer, ...]
    ops: tuple[Link, ...]
    consumers: tuple[Link, ...]

    @property
    def producer(self) -> Producer:
        """The first producer: the only one outside a residual group."""
        return self.producers[0]

    @property
    def name(self) -> str:
        return label(self.producer.node)


def _standard(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def _input(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if index < len(node.inputs) and node.inputs[index].name else None


def _const(node: gs.Node, index: int) -> np.ndarray | None:
    tensor = _input(node, index)
    return constant_array(tensor) if tensor is not None else None


def _array(node: gs.Node, index: int) -> np.ndarray:
    """A constant input the analysis has already checked; a missing one is a refusal, not a crash."""
    array = _const(node, index)
    if array is None:
        raise _Refuse(f"{node.op} '{label(node)}' input {index} is not a constant")
    return array


def constant_input(node: gs.Node, index: int) -> np.ndarray:
    """Input ``index`` of a node of a traced group, known to be a constant (a weight or bias)."""
    return _array(node, index)


def _float(array: np.ndarray | None) -> TypeGuard[np.ndarray]:
    return array is not None and array.dtype.kind == "f"


def _shape(array: np.ndarray | None) -> tuple[int, ...] | None:
    return None if array is None else array.shape


def match_producer(node: gs.Node) -> Producer | None:
    """The node as a channel producer (float constant weight, constant or no bias, group 1), else ``None``."""
    if not _standard(node) or len(node.outputs) != 1 or not node.inputs or constant_array(node.inputs[0]) is not None:
        return None  # a layer on constants is constant folding's job
    weight, bias = _const(node, 1), _const(node, 2)
    if not _float(weight) or (_input(node, 2) is not None and bias is None):
        return None
    shape = node.inputs[0].shape
    if node.op in ("Conv", "ConvTranspose") and weight.ndim >= 3 and node.attrs.get("group", 1) == 1:
        axis = 0 if node.op == "Conv" else 1
        if bias is None or bias.shape == (weight.shape[axis],):
            return Producer(node, weight.shape[axis], axis, Layout(1 - weight.ndim, 1, weight.ndim))
    elif node.op == "Gemm" and weight.ndim == 2:
        axis = 0 if node.attrs.get("transB", 0) else 1
        if bias is None or (bias.ndim <= 2 and (bias.ndim == 0 or bias.shape[-1] in (1, weight.shape[axis]))):
            return Producer(node, weight.shape[axis], axis, Layout(-1, 1, 2))
    elif node.op == "MatMul" and weight.ndim == 2 and len(node.inputs) == 2:
        return Producer(node, weight.shape[1], 1, Layout(-1, 1, None if shape is None else max(len(shape), 1)))
    return None


def constant_channels(producer: Producer) -> dict[int, float]:
    """Channels whose weights are all exactly zero, with their constant output: the bias (times beta for Gemm)."""
    node, weight, bias = producer.node, _array(producer.node, 1), _const(producer.node, 2)
    rows = np.moveaxis(weight, producer.weight_axis, 0).reshape(producer.channels, -1)
    zero = np.flatnonzero(~np.any(rows != 0, axis=1))
    if node.op == "Gemm" and node.attrs.get("alpha", 1.0) == 0:
        zero = np.arange(producer.channels)
    if bias is None:
        return {int(k): 0.0 for k in zero}
    scale = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    if bias.size == 1 or (bias.ndim >= 1 and bias.shape[-1] == producer.channels and bias.size == bias.shape[-1]):
        values = np.broadcast_to(bias.astype(np.float64).reshape(-1) * scale, (producer.channels,))
        return {int(k): float(values[k]) for k in zero}
    return {}  # a Gemm bias that varies along the batch: no channel is constant


def find_channel_groups(graph: gs.Graph, select: Callable[[Producer], bool] | None = None,
                        residual: bool = False) -> list[ChannelGroup | Skip]:
    """Every producer's group (only those ``select`` accepts), or a ``Skip`` saying why it cannot be followed.

    With ``residual``, producers joined by residual Adds form one group, listed once at its first producer; a
    partner that ``select`` refuses, or that is not a producer, refuses the group."""
    scope, found = Scope.of(graph), list[ChannelGroup | Skip]()
    grouped: set[int] = set()
    for node in graph.nodes:
        producer = match_producer(node)
        if producer is None or id(node) in grouped or (select is not None and not select(producer)):
            continue
        producers = [producer]
        try:
            group = _trace_residual(producers, scope, select) if residual else _trace(producers, scope)
        except _Refuse as e:
            grouped.update(id(p.node) for p in producers)
            stream = f" (a residual stream written by {len(producers)} layers)" if len(producers) > 1 else ""
            found.append(Skip(label(node), f"{e}{stream}"))
            continue
        grouped.update(id(p.node) for p in group.producers)
        found.append(group)
    return found


def _trace_residual(producers: list[Producer], scope: Scope, select: Callable[[Producer], bool] | None
                    ) -> ChannelGroup:
    """Trace from ``producers``; while a binary op waits for an operand no producer of the group reaches, add the
    producers behind that operand to the list and trace again (each round adds at least one, so it ends)."""
    producer = producers[0]
    while True:
        try:
            return _trace(producers, scope)
        except _Waiting as waiting:
            try:
                partners = _producers_behind(waiting.tensor, scope)
            except _Refuse as e:
                raise _Refuse(f"{waiting.where} adds the channels to {e}") from None
            for partner in partners:
                if partner.channels != producer.channels:
                    raise _Refuse(f"{waiting.where} adds {partner.channels} channels of '{label(partner.node)}' to "
                                  f"{producer.channels}") from None
                if select is not None and not select(partner):
                    raise _Refuse(f"{waiting.where} joins it to '{label(partner.node)}', which is not selected") from None
            known = {id(p.node) for p in producers}
            new = [p for p in partners if id(p.node) not in known]
            if not new:
                raise _Refuse(f"{waiting.where} combines the channels with a tensor that is not a per-channel "
                              "constant") from None
            producers += new


_PASS_BACK = {*_UNARY, "Identity", "Clip", "PRelu", "BatchNormalization", *_POOLS}


def _producers_behind(tensor: gs.Tensor, scope: Scope) -> list[Producer]:
    """The producers whose channels reach ``tensor`` through channel-preserving ops and residual Adds, in graph
    order; a refusal naming what else writes into it. The forward trace then checks every op on the way."""
    found: dict[int, Producer] = {}
    pending, seen = [tensor], set[int]()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        node = current.inputs[0] if len(current.inputs) == 1 else None
        if node is None or not _standard(node) or id(node) not in scope.nodes:
            raise _Refuse(f"'{current.name}', which no layer computes")
        producer = match_producer(node)
        if producer is not None:
            found[id(node)] = producer
        elif node.op in _BINARY and len(node.inputs) == 2:
            pending += [t for t in node.inputs if constant_array(t) is None]
        elif node.op in _PASS_BACK or (node.op == "Conv" and _depthwise(node, node.attrs.get("group", 1))):
            pending.append(node.inputs[0])
        else:
            raise _Refuse(f"{node.op} '{label(node)}', which the channel analysis cannot prune with them")
    order = {id(n): i for i, n in enumerate(scope.graph.nodes)}
    return sorted(found.values(), key=lambda p: order.get(id(p.node), 0))


class _Waiting(_Refuse):
    """A binary op of the chain whose other operand no producer of the group reaches (yet): ``tensor``."""

    def __init__(self, where: str, tensor: gs.Tensor) -> None:
        super().__init__(f"{where} combines the channels with a tensor that is not a per-channel constant")
        self.where, self.tensor = where, tensor


def _trace(producers: list[Producer], scope: Scope) -> ChannelGroup:
    ops: list[Link] = []
    consumers: list[Link] = []
    channels = producers[0].channels
    pending = [(p.node.outputs[0], p.layout) for p in producers]
    halves: dict[int, tuple[gs.Node, Layout, gs.Tensor]] = {}  # binary ops whose other input is not reached yet
    while pending:
        tensor, layout = pending.pop(0)
        if id(tensor) in scope.outputs:
            raise _Refuse(f"'{tensor.name}' is a graph output")
        if tensor.name in scope.outer or any(id(n) not in scope.nodes for n in tensor.outputs):
            raise _Refuse(f"'{tensor.name}' is read inside a subgraph")
        for node in tensor.outputs:
            uses = [i for i, t in enumerate(node.inputs) if t is tensor]
            where = f"{node.op} '{label(node)}'"
            if _standard(node) and node.op in _BINARY and len(node.inputs) == 2 and _const(node, 1 - uses[0]) is None:
                if any(link.node is node for link in ops):
                    continue  # reached through its second input slot of the same tensor
                half = halves.pop(id(node), None) if len(uses) == 1 else (node, layout, tensor)
                if half is None:
                    halves[id(node)] = (node, layout, node.inputs[1 - uses[0]])
                    continue
                if (half[1].axis, half[1].block) != (layout.axis, layout.block):
                    raise _Refuse(f"{where} combines the channels in two different layouts")
                rank = None if layout.rank is None or half[1].rank is None else max(layout.rank, half[1].rank)
                ops.append(Link(node, layout, BOTH))
                pending.append((node.outputs[0], Layout(layout.axis, layout.block, rank)))
                continue
            if len(uses) != 1 or not _standard(node):
                raise _Refuse(f"{where} reads '{tensor.name}' in a way the channel analysis cannot follow")
            link = Link(node, layout, uses[0])
            if node.op in _CONSUMERS and not _depthwise(node, channels * layout.block):
                _check_consumer(link, channels, where)
                consumers.append(link)
            else:
                pending.append((node.outputs[0], _check_op(link, channels, scope, where)))
                ops.append(link)
    for node, _, other in halves.values():
        raise _Waiting(f"{node.op} '{label(node)}'", other)
    if not consumers:
        raise _Refuse("its output reaches no layer")
    return ChannelGroup(tuple(producers), tuple(ops), tuple(consumers))


def _check_consumer(link: Link, channels: int, where: str) -> None:
    node, layout = link.node, link.layout
    weight = _const(node, 1)
    if link.index != 0 or weight is None or (_input(node, 2) is not None and _const(node, 2) is None):
        raise _Refuse(f"{where} reads the channels with a non-constant weight or not as its data input")
    if node.op in ("Gemm", "MatMul"):
        if node.attrs.get("transA", 0) or weight.ndim != 2 or layout.axis != -1:
            raise _Refuse(f"{where} is not a plain x @ W on the channel axis")
        size = weight.shape[1] if node.attrs.get("transB", 0) else weight.shape[0]
        if size != channels * layout.block:
            raise _Refuse(f"{where} has {size} input rows, expected {channels * layout.block}")
    elif node.attrs.get("group", 1) != 1 or layout.block != 1 or layout.axis != 1 - weight.ndim:
        raise _Refuse(f"{where} is grouped or does not read the channels on axis 1")
    elif weight.shape[1 if node.op == "Conv" else 0] != channels:
        raise _Refuse(f"{where} weight does not match {channels} channels")


def _rows(array: np.ndarray, layout: Layout, channels: int) -> np.ndarray:
    rows = _per_row(array, layout, channels)
    if rows is None:
        raise _Refuse(f"a constant of shape {array.shape} is not per-channel")
    return rows


def _per_row(array: np.ndarray | None, layout: Layout, channels: int) -> np.ndarray | None:
    """A constant as one value per row of the channel axis, if it is a scalar or varies only along that axis."""
    if not _float(array):
        return None
    rows, place = channels * layout.block, array.ndim + layout.axis
    along = array.shape[place] if place >= 0 else 1
    if along not in (1, rows) or any(d != 1 for i, d in enumerate(array.shape) if i != place):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (rows,)) if array.size else None


def _depthwise(node: gs.Node, rows: int) -> bool:
    """A Conv that filters each of ``rows`` channels on its own (group = channels, one filter each): channel k in
    is channel k out, so it belongs to the chain rather than reading it."""
    weight = _const(node, 1)
    return (node.op == "Conv" and rows > 1 and node.attrs.get("group", 1) == rows and weight is not None
            and weight.shape[:2] == (rows, 1))


def _check_op(link: Link, channels: int, scope: Scope, where: str) -> Layout:
    node, layout, op = link.node, link.layout, link.node.op
    if any(t.outputs or id(t) in scope.outputs for t in node.outputs[1:]):
        raise _Refuse(f"{where} has a second output in use")
    if op == "Conv":
        bias = _const(node, 2)
        if (link.index != 0 or not layout.at_axis_one or layout.block != 1 or not _float(_const(node, 1))
                or (_input(node, 2) is not None and _shape(bias) != (channels,))):
            raise _Refuse(f"{where} is a depthwise Conv whose parameters are not per-channel constants")
        return layout
    if op in _BINARY and len(node.inputs) == 2:
        constant = _const(node, 1 - link.index)
        if constant is None or _per_row(constant, layout, channels) is None:
            raise _Refuse(f"{where} combines the channels with a tensor that is not a per-channel constant")
        rank = None if layout.rank is None else max(layout.rank, constant.ndim)
        return Layout(layout.axis, layout.block, rank)
    if link.index != 0:
        raise _Refuse(f"{where} reads the channels as a parameter")
    if op in _UNARY or op in ("Identity", "Dropout", "Clip", "PRelu"):
        mode = _const(node, 2) if _input(node, 2) is not None else np.zeros(1, bool)
        bad = op == "Dropout" and (mode is None or bool(mode.any()))
        bad |= op == "Clip" and any(_input(node, i) is not None and _const(node, i) is None for i in (1, 2))
        bad |= op == "PRelu" and _per_row(_const(node, 1), layout, channels) is None
        if bad:
            raise _Refuse(f"{where} has parameters that are not per-channel constants")
        return layout
    if op == "BatchNormalization":
        per_channel = all(_shape(_const(node, i)) == (channels * layout.block,) for i in range(1, 5))
        if not layout.at_axis_one or node.attrs.get("training_mode", 0) or not per_channel:
            raise _Refuse(f"{where} is not an inference BatchNormalization over the channel axis")
        return layout
    if op in _POOLS:
        if not layout.at_axis_one or layout.block != 1:
            raise _Refuse(f"{where} does not pool a channels-first tensor")
        return layout
    if op in ("Flatten", "Reshape"):
        return _check_flatten(node, layout, channels, where)
    raise _Refuse(f"{where} reads the channels and is not channel-preserving")


def _check_flatten(node: gs.Node, layout: Layout, channels: int, where: str) -> Layout:
    """Flatten(axis=1) or Reshape to [N, -1] of a channels-first tensor whose non-batch dims are static."""
    shape = node.inputs[0].shape
    dims = list(shape[1:]) if shape is not None else []
    static = bool(dims) and all(isinstance(d, int) for d in dims) and dims[0] == channels * layout.block
    if not layout.at_axis_one or not static:
        raise _Refuse(f"{where} input has no static channels-first shape")
    inner, total = int(np.prod(dims[1:], dtype=np.int64)), int(np.prod(dims, dtype=np.int64))
    if node.op == "Flatten":
        ok = node.attrs.get("axis", 1) in (1, 1 - len(shape))
    else:
        target = _const(node, 1)
        first, second = (int(target[0]), int(target[1])) if target is not None and target.shape == (2,) else (1, 0)
        batch = (first == 0 and not node.attrs.get("allowzero", 0)) or (isinstance(shape[0], int) and first == shape[0])
        ok = (second == total and (batch or first == -1)) or (second == -1 and batch)
    if not ok:
        raise _Refuse(f"{where} does not provably map each channel to a block of rows")
    return Layout(-1, layout.block * inner, 2)


def _pads(node: gs.Node) -> bool:
    auto = node.attrs.get("auto_pad", "NOTSET")
    return auto not in ("NOTSET", "VALID") or any(node.attrs.get("pads", [])) or bool(node.attrs.get("ceil_mode", 0))


def _step(link: Link, channels: int, channel: int, value: np.ndarray) -> np.ndarray | Lost:
    """The value a constant channel has after one chain op."""
    node, op, layout = link.node, link.node.op, link.layout
    rows = layout.rows([channel])
    if op in _UNARY:
        return _UNARY[op](value, node.attrs)
    if op in _BINARY:
        other = _rows(_array(node, 1 - link.index), layout, channels)[rows]
        return _BINARY[op](value, other) if link.index == 0 else _BINARY[op](other, value)
    if op == "Clip":
        low, high = (_const(node, i) for i in (1, 2))
        lowest = node.attrs.get("min", -np.inf) if low is None else low.item()
        highest = node.attrs.get("max", np.inf) if high is None else high.item()
        return np.minimum(np.maximum(value, lowest), highest)
    if op == "PRelu":
        return np.where(value >= 0, value, _rows(_array(node, 1), layout, channels)[rows] * value)
    if op == "BatchNormalization":
        scale, bias, mean, var = (_array(node, i).astype(np.float64)[rows] for i in range(1, 5))
        return scale * (value - mean) / np.sqrt(var + node.attrs.get("epsilon", 1e-5)) + bias
    if op == "AveragePool" and node.attrs.get("count_include_pad", 0) and _pads(node) and np.any(value != 0):
        return Lost(f"AveragePool '{label(node)}' averages it with padding")
    if op in ("Flatten", "Reshape"):
        return np.repeat(value, _out_block(link) // layout.block)
    if op == "Conv":  # depthwise
        kernel, bias = _array(node, 1)[channel].astype(np.float64), _const(node, 2)
        shift = 0.0 if bias is None else float(bias[channel])
        if np.any(value != 0) and _pads(node):
            return Lost(f"depthwise Conv '{label(node)}' pads the constant with zeros")
        return value * kernel.sum() + shift
    return value


def _combine(op: str, a: np.ndarray | Lost, b: np.ndarray | Lost) -> np.ndarray | Lost:
    """A binary chain op on two values of one channel (a residual Add of two branches); lost if either is."""
    if isinstance(a, Lost):
        return a
    return b if isinstance(b, Lost) else _BINARY[op](a, b)


def _out_block(link: Link) -> int:
    """Rows per channel after a Flatten/Reshape: the block before it times the flattened spatial size."""
    return link.layout.block * int(np.prod(link.node.inputs[0].shape[2:], dtype=np.int64))


def consumer_values(group: ChannelGroup, values: Mapping[int, float]) -> list[Values]:
    """Follow each channel's value at the producer's output through the chain to every consumer's input (a single
    producer's group: a residual group's branches carry a value each)."""
    if len(group.producers) > 1:
        raise ValueError(f"residual group '{group.name}' has no single value per channel")
    at: dict[int, Values] = {id(group.producer.node.outputs[0]): {k: np.array([float(v)]) for k, v in values.items()}}
    with np.errstate(all="ignore"):
        for link in group.ops:
            if link.index == BOTH:
                first, second = (at[id(t)] for t in link.node.inputs)
                at[id(link.node.outputs[0])] = {k: _combine(link.node.op, v, second[k]) for k, v in first.items()}
                continue
            before = at[id(link.node.inputs[link.index])]
            at[id(link.node.outputs[0])] = {
                k: v if isinstance(v, Lost) else _step(link, group.producer.channels, k, v) for k, v in before.items()
            }
    return [at[id(link.node.inputs[0])] for link in group.consumers]


def removable_channels(group: ChannelGroup, values: Mapping[int, float]) -> tuple[dict[int, float], list[Skip]]:
    """The channels of ``values`` every consumer can lose exactly, and skips for those that must stay."""
    kept: dict[str, list[int]] = {}
    for link, seen in zip(group.consumers, consumer_values(group, values)):
        for k, v in seen.items():
            why = _why_kept(link, v)
            if why:
                kept.setdefault(why, []).append(k)
    out = {k: v for k, v in values.items() if not any(k in ks for ks in kept.values())}
    if out and len(out) == group.producer.channels:
        last = max(out)
        del out[last]
        kept.setdefault("removing every channel would leave the layer empty", []).append(last)
    return out, [Skip(group.name, f"channel(s) {sorted(set(ks))} kept: {why}") for why, ks in kept.items()]


def _why_kept(link: Link, value: np.ndarray | Lost) -> str:
    """Why a consumer cannot lose a channel of this value exactly, or ``""``."""
    where = f"{link.node.op} '{label(link.node)}'"
    if isinstance(value, Lost):
        return value.reason
    if not np.all(np.isfinite(value)):
        return "its value is not finite"
    if np.any(value != 0) and link.node.op == "ConvTranspose":
        return f"nonzero constant reaches {where}, whose borders see it unevenly"
    if np.any(value != 0) and link.node.op == "Conv" and _pads(link.node):
        return f"nonzero constant reaches {where}, which pads its input"
    return ""


def remove_channels(
    graph: gs.Graph, removals: Sequence[tuple[ChannelGroup, Mapping[int, float]]], refit: Refit | None = None
) -> int:
    """Remove channels (with their value at the producer's output) from each group; returns the channel count.

    All producers and chains are sliced before any consumer, so a layer that is both (a Conv in the middle of a
    network) sees its output channels removed before its input channels and bias are changed. Weights are never
    edited in place: every changed constant is a new tensor, so a weight shared with another node stays intact.
    With ``refit``, the consumers take the weights and bias change it returns instead of folding the values (a
    lossy rewrite such as pruning: the values are then ignored; ConvTranspose readers are not supported). A residual
    group needs ``refit``: its channels have no single value.
    """
    scope = Scope.of(graph)
    seen = [consumer_values(group, values) if refit is None else [] for group, values in removals]
    lost = [v for at in seen for vals in at for v in vals.values() if isinstance(v, Lost)]
    if lost:
        raise ValueError(f"a removed channel has no constant value at a consumer: {lost[0].reason}")
    for group, values in removals:
        keep = [k for k in range(group.producer.channels) if k not in values]
        for producer in group.producers:
            _slice_producer(producer, keep, scope)
        for link in group.ops:
            _slice_op(link, group.producer.channels, keep, scope)
    for (group, values), at in zip(removals, seen):
        keep = [k for k in range(group.producer.channels) if k not in values]
        if refit is not None:
            for link in group.consumers:
                _refit_consumer(link, keep, refit, scope)
            continue
        for link, vals in zip(group.consumers, at, strict=True):
            gone = sorted(values)
            removed = np.concatenate([vals[k] for k in gone]) if gone else np.zeros(0)  # type: ignore[misc]
            _slice_consumer(link, keep, link.layout.rows(gone), removed, scope)
    return sum(len(values) for _, values in removals)


def _set(node: gs.Node, index: int, array: np.ndarray, scope: Scope) -> None:
    """Point input ``index`` at a new constant; it takes the old name when the old tensor loses its only reader."""
    old = _input(node, index)
    name = scope.fresh(old.name if old is not None else f"{label(node)}_bias")
    only_here = isinstance(old, gs.Constant) and [id(n) for n in old.outputs] == [id(node)]
    if old is not None and only_here and sum(t is old for t in node.inputs) == 1 and scope.readers_ok(old):
        old.name, name = name, old.name
    tensor = gs.Constant(name, np.ascontiguousarray(array))
    if index < len(node.inputs):
        node.inputs[index] = tensor
    else:
        node.inputs.append(tensor)


def _slice_producer(producer: Producer, keep: list[int], scope: Scope) -> None:
    node, bias = producer.node, _const(producer.node, 2)
    _set(node, 1, np.take(_array(node, 1), keep, axis=producer.weight_axis), scope)
    if bias is not None and bias.ndim >= 1 and bias.shape[-1] == producer.channels:
        _set(node, 2, np.take(bias, keep, axis=-1), scope)


def _slice_op(link: Link, channels: int, keep: list[int], scope: Scope) -> None:
    node, layout, rows = link.node, link.layout, link.layout.rows(keep)
    if node.op == "BatchNormalization":
        for i in range(1, 5):
            _set(node, i, _array(node, i)[rows], scope)
    elif (node.op in _BINARY and link.index != BOTH) or node.op == "PRelu":
        index = 1 - link.index if node.op in _BINARY else 1
        array = _array(node, index)
        place = array.ndim + layout.axis
        if place >= 0 and array.shape[place] == channels * layout.block:
            _set(node, index, np.take(array, rows, axis=place), scope)
    elif node.op == "Conv":  # depthwise
        _set(node, 1, _array(node, 1)[keep], scope)
        if _const(node, 2) is not None:
            _set(node, 2, _array(node, 2)[keep], scope)
        node.attrs["group"] = len(keep)
    elif node.op == "Reshape" and int(_array(node, 1)[1]) != -1:
        target = _array(node, 1).copy()
        target[1] = _out_block(link) * len(keep)
        _set(node, 1, target, scope)


def _slice_consumer(link: Link, keep: list[int], gone: np.ndarray, values: np.ndarray, scope: Scope) -> None:
    node, weight, rows = link.node, _array(link.node, 1), link.layout.rows(keep)
    if node.op in ("Gemm", "MatMul"):
        trans = bool(node.attrs.get("transB", 0))
        matrix = weight.T if trans else weight
        delta = float(node.attrs.get("alpha", 1.0)) * (values @ matrix[gone].astype(np.float64))
        _set(node, 1, np.take(weight, rows, axis=1 if trans else 0), scope)
        if np.any(delta != 0):
            (_fold_gemm if node.op == "Gemm" else _fold_matmul)(node, delta.astype(weight.dtype), scope)
    elif node.op == "Conv":
        sums = weight[:, gone].astype(np.float64).reshape(weight.shape[0], len(gone), -1).sum(axis=2)
        delta = sums @ values
        _set(node, 1, weight[:, keep], scope)
        if np.any(delta != 0):
            bias = _const(node, 2)
            _set(node, 2, (delta if bias is None else bias.astype(np.float64) + delta).astype(weight.dtype), scope)
    else:
        _set(node, 1, weight[keep], scope)


def _refit_consumer(link: Link, keep: list[int], refit: Refit, scope: Scope) -> None:
    node, weight = link.node, _array(link.node, 1)
    if node.op in ("Gemm", "MatMul"):
        trans = bool(node.attrs.get("transB", 0))
        new, delta = refit(link, (weight.T if trans else weight).astype(np.float64), keep)
        _set(node, 1, (new.T if trans else new).astype(weight.dtype), scope)
        delta = float(node.attrs.get("alpha", 1.0)) * np.asarray(delta, np.float64)
        if np.any(delta != 0):
            (_fold_gemm if node.op == "Gemm" else _fold_matmul)(node, delta.astype(weight.dtype), scope)
    elif node.op == "Conv":
        out = weight.shape[0]
        new, delta = refit(link, weight.reshape(out, -1).T.astype(np.float64), keep)
        _set(node, 1, new.T.reshape(out, len(keep), *weight.shape[2:]).astype(weight.dtype), scope)
        if np.any(np.asarray(delta) != 0):
            bias = _const(node, 2)
            total = np.asarray(delta, np.float64) + (0.0 if bias is None else bias.astype(np.float64))
            _set(node, 2, total.astype(weight.dtype), scope)
    else:
        raise ValueError(f"{node.op} '{label(node)}' cannot be refitted")


def _fold_gemm(node: gs.Node, delta: np.ndarray, scope: Scope) -> None:
    bias = _const(node, 2)
    beta = float(node.attrs.get("beta", 1.0))
    total = delta if bias is None else (beta * bias.astype(np.float64) + delta).astype(delta.dtype)
    node.attrs["beta"] = 1.0
    _set(node, 2, total, scope)


def _fold_matmul(node: gs.Node, delta: np.ndarray, scope: Scope) -> None:
    """Add the constant to the bias Add that follows the MatMul, or insert one (exact, and keeps the pattern)."""
    out = node.outputs[0]
    after = out.outputs[0] if len(out.outputs) == 1 and scope.readers_ok(out) else None
    if after is not None and after.op == "Add" and _standard(after) and id(after) in scope.nodes:
        index = 1 if after.inputs[0] is out else 0
        bias = constant_array(after.inputs[index])
        if _float(bias) and _per_row(bias, Layout(-1), delta.size) is not None and bias.dtype == delta.dtype:
            _set(after, index, (bias.astype(np.float64) + delta).astype(delta.dtype), scope)
            return
    middle = gs.Variable(scope.fresh(out.name), dtype=out.dtype, shape=None)
    node.outputs[0] = middle
    constant = gs.Constant(scope.fresh(f"{label(node)}_bias"), delta)
    add = gs.Node("Add", scope.fresh(f"{label(node)}_bias_add"), inputs=[middle, constant], outputs=[out])
    scope.graph.nodes.append(add)
