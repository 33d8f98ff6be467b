"""Dead-neuron removal: remove channels whose activation is the same on every calibration sample.

A ReLU channel that never fires, or a channel saturated at a clip bound, feeds the next layers a constant. The pass
streams the calibration samples, records each channel's range where every reader sees it (after the chain of
channel-preserving ops) and its mean at the producer's output, and removes the channels that never move: the
producer loses them, the chain and every reader lose the matching rows, and the constant is folded into the readers'
bias (``graphopt_passes._channels`` does the surgery, as for zero-weight elimination). The producer-side value given
to the surgery is the channel's mean there; a channel is only removed if the chain maps that mean to exactly the
constant that was measured, so the rewrite reproduces the calibration data exactly and is lossy only for inputs
that would wake the channel up, which verification on held-out samples checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphopt.activations import reduce_activations
from graphopt.graph import copy_model, editing, import_graph
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit
from graphopt.summary import count_params
from graphopt_passes import _channels as channels

__all__ = ["DeadNeuronRemovalPass"]

log = logging.getLogger(__name__)


@dataclass
class _Stats:
    """Per-row min and max of one tensor along its channel axis (and the mean, for producer outputs)."""

    axis: int
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    total: np.ndarray | None = None
    count: int = 0

    def update(self, x: np.ndarray) -> None:
        values = np.asarray(x)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        others = tuple(i for i in range(values.ndim) if i != self.axis % values.ndim)  # reduced in place: no copy
        low = values.min(axis=others).astype(np.float64)  # exact: the extremes are values of x
        high = values.max(axis=others).astype(np.float64)
        total = values.sum(axis=others, dtype=np.float64)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)
        self.total = total if self.total is None else self.total + total
        self.count += values.size // max(values.shape[self.axis], 1)


class DeadNeuronRemovalPass(PassBase):
    """Remove channels that are constant on all calibration samples, folding the constant into the next layers."""

    name = "dead-neuron-removal"
    goal_stage = 0
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        align: int = field(
            default=8,
            metadata={"help": "keep Conv channel counts a multiple of this (onnxruntime's NCHWc kernels block by 8)"},
        )

        def __post_init__(self) -> None:
            if self.align < 1:
                raise ValueError("align must be at least 1")

    def __init__(self, options: DeadNeuronRemovalPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[tuple[dict[str, dict[int, float]], list[Skip]]] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[DeadNeuronRemovalPass, ...]:
        """Removing constant channels: faster and smaller."""
        return (cls(),)

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer with dead channels."""
        plan, _ = self._plan(model, context)
        return tuple(Unit(name, detail=f"{len(values)} dead channel(s)") for name, values in plan.items())

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        empty = {"channels_removed": 0, "params_removed": 0, "units_applied": 0}
        plan, skipped = self._plan(model, context)
        chosen = {name: values for name, values in plan.items() if context.selects(name)}
        if not chosen:
            return PassResult(copy_model(model), False, empty, tuple(skipped))
        with editing(model) as edit:
            groups = {g.name: g for g in channels.find_channel_groups(edit.graph)
                      if isinstance(g, channels.ChannelGroup)}
            removed = channels.remove_channels(edit.graph, [(groups[n], v) for n, v in chosen.items()])
        stats = {"channels_removed": removed, "params_removed": count_params(model) - count_params(edit.model),
                 "units_applied": len(chosen)}
        notes = tuple(f"{name}: {len(values)} dead channel(s) {sorted(values)[:8]}" for name, values in chosen.items())
        return PassResult(edit.model, True, stats, tuple(skipped), notes)

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> tuple[dict[str, dict[int, float]], list[Skip]]:
        """Per group, the dead channels with their value at the producer's output, and skips; cached by model
        digest, since narrowing runs the pass once per trial on the same model."""
        if context.calibration is None:
            return {}, []
        return self._plans.get(model, context, lambda: self._measure(model, context))

    def _measure(self, model: onnx.ModelProto, context: PassContext) -> tuple[dict[str, dict[int, float]], list[Skip]]:
        assert context.calibration is not None
        graph = import_graph(model)
        found = channels.find_channel_groups(graph)
        groups = [g for g in found if isinstance(g, channels.ChannelGroup)]
        skipped = [g for g in found if isinstance(g, Skip)]
        stats: dict[str, _Stats] = {}
        for group in groups:
            stats.setdefault(group.producer.node.outputs[0].name, _Stats(group.producer.layout.axis))
            for link in group.consumers:
                stats.setdefault(link.node.inputs[0].name, _Stats(link.layout.axis))
        if not stats:
            return {}, skipped
        reduce_activations(model, {name: tensor.update for name, tensor in stats.items()}, context.calibration,
                           context.runtime, progress=context.progress, label="dead-neuron calibration")
        plan = {}
        for group in groups:
            values, why = self._dead(group, stats)
            skipped += why
            if values:
                plan[group.name] = values
        return plan, skipped

    def _dead(self, group: channels.ChannelGroup, stats: dict[str, _Stats]) -> tuple[dict[int, float], list[Skip]]:
        produced = stats[group.producer.node.outputs[0].name]
        assert produced.total is not None
        means = produced.total / max(produced.count, 1)
        readers = [(link, stats[link.node.inputs[0].name]) for link in group.consumers]
        dead = [k for k in range(group.producer.channels)
                if all(np.array_equal(s.low[link.layout.rows([k])], s.high[link.layout.rows([k])])  # type: ignore[index]
                       for link, s in readers)]
        values = {k: float(means[k]) for k in dead}
        mismatched = set()
        for (link, s), seen in zip(readers, channels.consumer_values(group, values), strict=True):
            for k, value in seen.items():
                measured = s.low[link.layout.rows([k])]  # type: ignore[index]
                if isinstance(value, channels.Lost) or not np.allclose(value, measured, rtol=1e-6, atol=1e-7):
                    mismatched.add(k)
        skipped = [Skip(group.name, f"channel(s) {sorted(mismatched)} constant but not reproduced through the chain")
                   ] if mismatched else []
        values = {k: v for k, v in values.items() if k not in mismatched}
        values, kept = channels.removable_channels(group, values) if values else ({}, [])
        if group.producer.node.op in ("Conv", "ConvTranspose") and self.options.align > 1:
            left = group.producer.channels - len(values)
            extra = (-left) % self.options.align
            for k in sorted(values, reverse=True)[:extra] if extra <= len(values) else list(values):
                del values[k]
        return values, [*skipped, *kept]
