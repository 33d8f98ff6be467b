"""Zero-weight elimination: remove output channels whose weights are all zero, and arithmetic that does nothing.

A channel whose weights are all exactly 0.0 outputs its bias everywhere; after the chain of channel-preserving ops it
is still a known constant, so the channel can go from the producer, the chain and every consumer, with the constant
folded into the consumers' bias (``graphopt_passes._channels`` does the analysis and surgery). Algebraic no-ops go
too: Add/Sub of zeros, Mul/Div by ones (when they do not broadcast), all-zero Conv/Gemm biases, and Mul by zeros with
a static shape. Both assume finite activations (NaN·0 is NaN). The rewrite is repeated until nothing changes, since
removing one layer's input channels can leave some of its own output channels all zero.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.graph import (
    Scope,
    constant_array,
    copy_model,
    default_opset,
    editing,
    import_graph,
    infer_shapes,
    label,
    overridable_initializers,
)
from graphopt.pass_base import PassBase, PassContext, PassResult, Skip, Unit
from graphopt.summary import count_params
from graphopt_passes import _channels as channels

__all__ = ["ZeroWeightEliminationPass"]

log = logging.getLogger(__name__)

_ROUNDS = 8
_NEUTRAL = {"Add": (0.0, (0, 1)), "Sub": (0.0, (1,)), "Mul": (1.0, (0, 1)), "Div": (1.0, (1,))}


@dataclass
class _Change:
    """A unit's change found in one round: its name, what it does, and what its phase needs to apply it."""

    unit: str
    detail: str
    payload: Any
    channels: int = 0


@dataclass
class _Outcome:
    model: onnx.ModelProto
    details: dict[str, list[str]] = field(default_factory=dict)
    channels: int = 0
    skipped: list[Skip] = field(default_factory=list)


class ZeroWeightEliminationPass(PassBase):
    """Remove all-zero output channels (folding their constant into the next layer) and no-op arithmetic."""

    name = "zero-weight-elimination"
    lossless = True
    needs_data = False

    @dataclass(frozen=True)
    class Options:
        align: int = field(
            default=8,
            metadata={"help": "keep Conv channel counts a multiple of this (onnxruntime's NCHWc kernels block "
                      "channels by 8 on AVX2; an odd count runs slower); 1 removes every zero channel"},
        )


    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per changed producer (``"3 of 32 channels"``) or simplified node, found by a full dry run."""
        if _refusal(model):
            return ()
        outcome = _rewrite(model, lambda unit: True, self.options.align)
        return tuple(Unit(name, detail="; ".join(details)) for name, details in outcome.details.items())

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        refusal = _refusal(model)
        outcome = _Outcome(model, skipped=[Skip("graph", refusal)]) if refusal else _rewrite(model, context.selects, self.options.align)
        if not outcome.details:
            zero = dict.fromkeys(("channels_removed", "nodes_removed", "params_removed", "units_applied"), 0)
            return PassResult(copy_model(model), False, zero, tuple(outcome.skipped))
        stats = {
            "channels_removed": outcome.channels,
            "nodes_removed": _node_count(model) - _node_count(outcome.model),
            "params_removed": count_params(model) - count_params(outcome.model),
            "units_applied": len(outcome.details),
        }
        log.info("%s: %s", self.name, stats)
        return PassResult(outcome.model, True, stats, tuple(outcome.skipped))


def _refusal(model: onnx.ModelProto) -> str:
    """Why the pass cannot touch the model at all, or ``""``."""
    overridable = overridable_initializers(model.graph)
    if overridable:
        return f"initializers are also graph inputs (overridable at run time): {overridable[:3]}"
    return ""


def _rewrite(model: onnx.ModelProto, selects: Callable[[str], bool], align: int) -> _Outcome:
    """Alternate channel removal and identities, each in its own edit (shapes re-inferred), until nothing changes."""
    outcome = _Outcome(infer_shapes(model))
    opset = default_opset(model)
    for _ in range(_ROUNDS):
        progressed, skipped = False, []
        channel_changes = functools.partial(_channel_changes, align=align)
        for find, apply in ((channel_changes, _apply_channels), (_identity_changes, _apply_identities)):
            changes, skips = find(import_graph(outcome.model), opset)
            skipped += skips
            if not any(selects(c.unit) for c in changes):
                continue
            with editing(outcome.model) as edit:
                chosen = [c for c in find(edit.graph, opset)[0] if selects(c.unit)]
                apply(edit.graph, chosen)
            for change in chosen:
                outcome.details.setdefault(change.unit, []).append(change.detail)
                outcome.channels += change.channels
            outcome.model, progressed = edit.model, True
        known = {skip.target for skip in outcome.skipped}  # later rounds renumber channels: first word wins
        outcome.skipped += [skip for skip in skipped if skip.target not in known]
        if not progressed:
            break
    return outcome


def _channel_changes(graph: gs.Graph, opset: int, align: int = 1) -> tuple[list[_Change], list[Skip]]:
    """One change per producer with zero-weight channels that every consumer can lose exactly."""
    changes, skipped = [], []
    for found in channels.find_channel_groups(graph, select=lambda p: bool(channels.constant_channels(p))):
        if isinstance(found, Skip):
            skipped.append(found)
            continue
        removable, kept = channels.removable_channels(found, channels.constant_channels(found.producer))
        skipped += kept
        if found.producer.node.op in ("Conv", "ConvTranspose"):
            removable, why = _aligned(removable, found.producer.channels, align)
            skipped += [Skip(found.name, why)] if why else []
        if removable:
            detail = f"{len(removable)} of {found.producer.channels} channels"
            changes.append(_Change(found.name, detail, (found, removable), len(removable)))
    return changes, skipped


def _aligned(removable: dict[int, float], total: int, align: int) -> tuple[dict[int, float], str]:
    """Keep enough removable channels for the kept count to be a multiple of ``align`` (or all of them)."""
    keep = total - len(removable)
    target = min(-(-keep // align) * align, total)
    if target == keep:
        return removable, ""
    trimmed = dict(sorted(removable.items())[: total - target])
    return trimmed, f"{target - keep} zero channel(s) kept so that {target} of {total} stay a multiple of {align}"


def _apply_channels(graph: gs.Graph, chosen: list[_Change]) -> None:
    channels.remove_channels(graph, [change.payload for change in chosen])


def _identity_changes(graph: gs.Graph, opset: int) -> tuple[list[_Change], list[Skip]]:
    """Zero biases, and Add/Sub/Mul/Div whose constant is neutral (bypassed) or Mul by zeros (a constant)."""
    scope, changes, skipped = Scope.of(graph), [], []
    for node in graph.nodes:
        found = _identity(node, scope, opset) if node.domain in (None, "", "ai.onnx") else None
        if isinstance(found, Skip):
            skipped.append(found)
        elif found is not None:
            changes.append(found)
    return changes, skipped


def _identity(node: gs.Node, scope: Scope, opset: int) -> _Change | Skip | None:
    name = label(node)
    if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) == 3 and node.inputs[2].name:
        bias = constant_array(node.inputs[2])
        if bias is not None and bias.size and not np.any(bias) and (node.op != "Gemm" or opset >= 11):
            return _Change(name, "zero bias dropped", lambda: node.inputs.pop())
        return None
    if node.op not in _NEUTRAL or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    arrays = [constant_array(t) for t in node.inputs]
    index = 0 if arrays[0] is not None else 1
    constant, data, out = arrays[index], node.inputs[1 - index], node.outputs[0]
    if constant is None or arrays[1 - index] is not None or constant.size == 0:
        return None  # no constant, or two: constant folding's job
    neutral, sides = _NEUTRAL[node.op]
    zero_mul = node.op == "Mul" and not np.any(constant)
    if not zero_mul and not (index in sides and np.all(constant == neutral)):
        return None
    why = _why_not(data, out, constant, scope, static=zero_mul)
    if why:
        return Skip(name, f"{node.op} by a constant {0 if zero_mul else neutral:g} kept: {why}")
    if zero_mul:
        zeros = np.zeros(np.broadcast_shapes(tuple(data.shape), constant.shape), constant.dtype)
        return _Change(name, "Mul by zeros replaced by a constant", lambda: _to_constant(node, zeros))
    return _Change(name, f"{node.op} of a neutral constant bypassed", lambda: _bypass(node, 1 - index))


def _why_not(data: gs.Tensor, out: gs.Tensor, constant: np.ndarray, scope: Scope, static: bool) -> str:
    """Why a no-op node cannot go: its output is visible outside, or the constant changes shape or dtype."""
    if not scope.readers_ok(out):
        return "its output is a graph output or read inside a subgraph"
    if data.dtype is not None and data.dtype != constant.dtype:
        return "the constant has another dtype"
    shape = data.shape
    if static:
        return "" if shape is not None and all(isinstance(d, int) for d in shape) else "the output shape is not static"
    if shape is None:
        return "" if constant.ndim == 0 else "the input shape is unknown"
    pairs = zip(reversed(constant.shape), reversed(list(shape)))
    broadcasts = constant.ndim > len(shape) or any(d not in (1, s) for d, s in pairs)
    return "the constant broadcasts the input to a larger shape" if broadcasts else ""


def _bypass(node: gs.Node, index: int) -> None:
    """Rewire the readers of the node's output to its data input (read now: an earlier bypass may have moved it)."""
    data, out = node.inputs[index], node.outputs[0]
    for consumer in list(out.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is out:
                consumer.inputs[i] = data
    node.outputs.clear()


def _to_constant(node: gs.Node, zeros: np.ndarray) -> None:
    out = node.outputs[0]
    node.outputs.clear()
    out.to_constant(zeros)


def _apply_identities(graph: gs.Graph, chosen: list[_Change]) -> None:
    for change in chosen:
        change.payload()


def _node_count(model: onnx.ModelProto) -> int:
    """Computing nodes of the main graph (``Constant`` nodes are weights, not computation)."""
    return sum(node.op_type != "Constant" for node in model.graph.node)
