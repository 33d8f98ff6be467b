"""The contract between the pass manager and every pass: ``PassBase``, ``PassResult``, ``Skip``, ``Unit``.

A pass is a class with a stable ``name``, a nested frozen ``Options`` dataclass and a ``run`` method that returns a
new model plus facts about what it did. It never verifies, reports or prints: the manager does that. A pass that can
apply itself to a subset of independent units (layers, channels groups) lists them in ``units``; the manager then
narrows a failing pass to the largest subset that stays within the tolerance. This module names no concrete pass.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import onnx

from graphopt import machine
from graphopt._proto import weight_bytes
from graphopt.errors import PreconditionError
from graphopt.gates import SpeedCheck
from graphopt.graph import copy_model, model_digest
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import RuntimeConfig

if TYPE_CHECKING:
    from graphopt.data import Dataset

__all__ = ["Goal", "PassBase", "PassContext", "PassResult", "PlanCache", "Skip", "SpeedCheck", "Unit", "level_unit", "nested_levels"]

T = TypeVar("T")

Goal = Literal["latency", "size"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """Something a pass left alone, and why (``target`` is a node, tensor or unit name)."""

    target: str
    reason: str


@dataclass(frozen=True)
class Unit:
    """An independent part of a pass's rewrite that the manager may leave out when narrowing.

    ``sensitivity`` is the pass's own estimate of how much applying this unit alone hurts accuracy (higher is
    worse). The manager measures every unit alone end to end when a pass has few enough units to make that cheap
    (``manager.MEASURED_UNITS``), and uses the estimate beyond that; ``None`` means measure it whatever the count.
    ``gain`` is what applying it saves (bytes, params: one measure
    across a pass's units); with gains the manager ranks units by damage per gain, so a large saving that does
    little damage (an embedding table) is not crowded out by many small ones. ``extends`` names the unit this one
    goes further than (a layer's next milder level: pruning 20% of its channels extends pruning 10%): the manager
    ranks it by the damage and gain it adds to that unit, and never before it.
    """

    name: str
    sensitivity: float | None = None
    detail: str = ""
    gain: float | None = None
    extends: str | None = None


def level_unit(target: str, fraction: float) -> str:
    """The unit of ``target`` at a level given as a fraction (a ratio, a sparsity): ``conv1@53.3%``."""
    return f"{target}@{100 * fraction:.3g}%"


def nested_levels(units: Iterable[tuple[Unit, str, float]]) -> tuple[Unit, ...]:
    """``(unit, layer, strength)`` triples as units, each set to extend the next milder unit (lower strength) of its
    layer: for passes with several levels per layer, of which ``run`` applies the strongest selected."""
    listed = list(units)
    milder: dict[str, str] = {}
    by_layer: dict[str, list[tuple[float, str]]] = {}
    for unit, layer, strength in listed:
        by_layer.setdefault(layer, []).append((strength, unit.name))
    for ladder in by_layer.values():
        ladder.sort()
        milder |= {name: below for (_, below), (_, name) in itertools.pairwise(ladder)}
    return tuple(dataclasses.replace(unit, extends=milder.get(unit.name)) for unit, _, _ in listed)


@dataclass(frozen=True)
class PassResult:
    """What a pass did. ``stats`` holds counts such as ``nodes_removed`` or ``channels_removed``."""

    model: onnx.ModelProto
    modified: bool
    stats: Mapping[str, int | float] = field(default_factory=dict)
    skipped: tuple[Skip, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassContext:
    """What a pass may use besides the model.

    ``calibration`` holds the samples a lossy pass may fit on; the manager never judges a pass on them.
    ``only_units``, when set, restricts the pass to those units (narrowing); ``None`` means all units.
    ``cpu_flags`` describe the CPU the result is for.
    """

    calibration: Dataset | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    only_units: frozenset[str] | None = None
    progress: Progress = NULL_PROGRESS
    cpu_flags: frozenset[str] = field(default_factory=lambda: machine.cpu_flags())
    """The target CPU's feature flags as Linux names them (this machine's by default, read when the context is
    made): a pass decides on CPU features through these, never by reading the machine itself."""

    @property
    def has_vnni(self) -> bool:
        """Whether int8 dot products accumulate in int32 on the target CPU (``machine.VNNI_FLAGS``)."""
        return bool(self.cpu_flags & machine.VNNI_FLAGS)

    def with_units(self, units: frozenset[str] | None) -> PassContext:
        return dataclasses.replace(self, only_units=units)

    def selects(self, unit: str) -> bool:
        """Whether ``unit`` is to be applied in this run."""
        return self.only_units is None or unit in self.only_units


class PlanCache(Generic[T]):
    """A pass's last plan (what it measured and fitted), kept for the same model and calibration samples.

    Narrowing runs a pass once per trial on the same model, and calibration and fitting are the costly part, so a
    data-aware pass plans once and applies subsets of the plan. "The same model" is checked by comparing it with a
    copy of the one planned for (one pass over the model in C; a digest would serialise and hash it, 0.2 s per run
    on a 90 MB transformer); beyond ``_COMPARED_BYTES`` of weights the cache keeps the model's digest instead of a
    copy (models beyond protobuf's 2 GB have none and are not cached). The calibration set is matched by identity.
    """

    def __init__(self) -> None:
        self._entry: tuple[onnx.ModelProto | bytes, object, T] | None = None

    def get(self, model: onnx.ModelProto, context: PassContext, make: Callable[[], T]) -> T:
        """The cached plan, or ``make()``. A plan that cannot be made raises: the manager reports the failure (a
        pass refuses with ``Skip`` or ``PreconditionError``, never by swallowing its own bugs)."""
        key: onnx.ModelProto | bytes = model if weight_bytes(model) <= _COMPARED_BYTES else model_digest(model)
        if self._entry is not None and self._entry[1] is context.calibration and self._entry[0] == key:
            return self._entry[2]
        plan = make()
        if isinstance(key, onnx.ModelProto):
            self._entry = (copy_model(key), context.calibration, plan)  # the pass may rewrite the model it was handed
        else:
            self._entry = (key, context.calibration, plan) if key else None
        return plan


_COMPARED_BYTES = 1 << 28
"""Weights up to which ``PlanCache`` keeps a copy of the model to compare with (256 MiB), beyond which a digest."""


class PassBase(abc.ABC):
    """Base class of graphopt passes.

    Subclasses set ``name`` (kebab-case, stable: used on the command line and in reports), ``lossless`` (the
    rewritten graph computes the same function, so random data can verify it; judged against the previous model with
    the tight lossless tolerance unless ``same_rounding`` is False: then onnxruntime may pick other kernels for the
    rewritten graph, whose rounding can differ by more, and the budget against the original judges it) and
    ``needs_data`` (needs real calibration samples), define a nested frozen dataclass ``Options`` and implement
    ``run``. A pass that refuses says so once: ``requires`` raises ``PreconditionError`` for a model it cannot
    apply to at all, and ``run`` returns ``modified=False`` with a ``Skip`` per thing it left alone. Anything else it
    raises is a failure the manager reports (type, message, traceback with ``-v``); a pass never catches its own
    bugs. A pass that serves latency (``serves``) states how to time it (``speed_check``); the manager times the
    final candidate once and declines it when it is not faster. The first line of the class docstring is the
    pass's one-line help.
    """

    name: ClassVar[str]
    goal_stage: ClassVar[int] = 1
    """Where the pass goes in a ``--goal`` plan that combines two: 0 changes the graph's structure (pruning,
    low-rank), 1 its numbers (int8, float16, codebooks); a combined plan takes one of each, stage 0 first."""
    lossless: ClassVar[bool] = False
    same_rounding: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False
    options: Any

    @dataclass(frozen=True)
    class Options:
        """A pass without options."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else type(self).Options()
        if not isinstance(self.options, type(self).Options):
            raise TypeError(f"{type(self).__name__} expects {type(self).Options.__qualname__}, got {self.options!r}")

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: the pass's one-line help."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        changed = {
            f.name: getattr(self.options, f.name)
            for f in dataclasses.fields(self.options)
            if getattr(self.options, f.name) != f.default
        }
        inner = ",".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.name}{{{inner}}}" if inner else self.name

    def requires(self, model: onnx.ModelProto, context: PassContext) -> None:
        """Raise ``PreconditionError`` when the pass cannot apply to ``model`` at all (``needs_data`` is checked
        before this)."""

    def serves(self) -> frozenset[Goal]:
        """What the pass's result is for: ``latency`` (the manager's speed gate times it, see ``speed_check``),
        ``size``, both, or neither (a clean-up)."""
        return frozenset()

    def speed_check(self) -> SpeedCheck:
        """How the manager times this pass's final candidate when it serves latency; off unless overridden."""
        return SpeedCheck()

    def ungated(self) -> PassBase | None:
        """This pass with its speed check only noting the ratio (its ``speed_check`` option set to ``note``), or
        ``None`` when it has no such option: what ``--goal`` tries after the gate declined a lossless pass timed
        alone, whose pay-off may come with the passes after it."""
        if "speed_check" not in {f.name for f in dataclasses.fields(self.options)}:
            return None
        return type(self)(dataclasses.replace(self.options, speed_check="note"))

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[PassBase, ...]:
        """The settings of this pass that ``--goal`` tries for ``goal`` (each alone after the lossless passes, under
        the whole budget); none unless overridden: a pass joins the goal search by naming them."""
        return ()

    def verified_in(self) -> str:
        """The runtime whose outputs judge this pass's candidates: ``onnxruntime``, or ``openvino`` for a result
        meant for OpenVINO (its CPU plugin, when installed here; otherwise onnxruntime, and the report says so).
        Every candidate must also load in onnxruntime."""
        return "onnxruntime"

    def speed_variants(self, result: PassResult) -> tuple[PassBase, ...]:
        """The same rewrite with another speed trade-off, whose pay-off depends on the CPU (int8 regions or layers
        only), where it would differ from ``result`` (this pass's final candidate): each takes the same units. The
        speed gate verifies every variant on the units kept, times them with the result in one run and keeps the
        fastest verified one. None unless overridden."""
        return ()

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """The independent units this pass can apply selectively; empty when it cannot be narrowed."""
        return ()

    @abc.abstractmethod
    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        """Rewrite a copy of ``model``; never mutate the argument."""

    def __call__(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        """``run`` after the preconditions: real calibration samples when ``needs_data``, then ``requires``; each
        raises ``PreconditionError``, which the manager reports as a skip."""
        calibration = context.calibration
        if self.needs_data and (calibration is None or calibration.synthetic or calibration.n_samples == 0):
            raise PreconditionError(f"{self.name} needs real calibration samples (give --data with at least 2 "
                                    "samples)")
        self.requires(model, context)
        return self.run(model, context)
