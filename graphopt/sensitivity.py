"""How much each unit of a pass harms the outputs when applied alone: what a narrowing search ranks units by.

The pass builds one candidate per unit, and the candidates run as one model (``graphopt.union``): the computation
upstream of each unit is shared, so ranking dozens of units costs a few runs of the model instead of one session and
one run per unit. A candidate the union cannot take runs on its own. Each candidate is screened
(``verify.screening.screen``) against the model before the pass on the ranking samples: its ``badness`` ranks it,
and a clear failure there (a NaN, a changed shape, a mean far below the budget) leaves the unit out at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import onnx

from graphopt.data import Dataset
from graphopt.errors import GraphoptError, PreconditionError, first_line
from graphopt.graph import copy_model, free_copies
from graphopt.modelio import check_model
from graphopt.outputs import Output, Outputs, RaggedOutput
from graphopt.pass_base import PassBase, PassContext
from graphopt.runtime import create_session, run_dataset
from graphopt.union import ModelUnion, UnionBuilder, UnionError
from graphopt.verify.output_kinds import OutputKind
from graphopt.verify.screening import Screen, screen
from graphopt.verify.tolerance import Tolerance

__all__ = ["OUTPUT_BYTES", "measure_alone"]

log = logging.getLogger(__name__)

OUTPUT_BYTES = 2**28
"""Candidate outputs held at once while ranking (256 MiB): each union holds as many candidates as that allows
(onnxruntime runs every node of a model, whichever outputs are fetched, so a union is not run in parts)."""


def measure_alone(pass_: PassBase, model: onnx.ModelProto, units: Sequence[str], context: PassContext,
                  data: Dataset, tolerance: Tolerance, kinds: Mapping[str, OutputKind],
                  done: Callable[[int], None] = lambda _: None) -> dict[str, Screen]:
    """Each unit of ``units`` applied alone to ``model``, screened against ``model`` on ``data`` with
    ``tolerance``; ``done(1)`` after each unit's candidate is built. A unit whose pass raises or changes nothing
    gets an infinitely bad screen that says so."""
    runtime = context.runtime
    reference, per_sample = run_dataset(create_session(model, runtime), data, runtime)

    def judged(outputs: Outputs) -> Screen:
        return screen(reference, outputs, tolerance, kinds)

    def alone(candidate: onnx.ModelProto | str) -> Screen:
        """A candidate run in a session of its own (or why it has none)."""
        if isinstance(candidate, str):
            return Screen(0, math.inf, candidate)
        try:
            outputs, _ = run_dataset(check_model(candidate, runtime), data, runtime, per_sample=per_sample)
        except GraphoptError as e:
            return Screen(0, math.inf, str(e))
        return judged(outputs)

    screens: dict[str, Screen] = {}
    per_group = max(1, OUTPUT_BYTES // max(1, _bytes(reference)))
    builder = UnionBuilder()

    def run_union() -> None:
        union = builder.build()
        try:
            screens.update(_together(union, data, per_sample, context, judged))
        except GraphoptError as e:  # onnxruntime refused the union: build and run its candidates one by one
            log.info("ranking candidates one by one: %s", e)
            for unit in union.outputs:
                screens[unit] = alone(_candidate(pass_, model, context.with_units(frozenset([unit]))))

    for unit in units:
        candidate = _candidate(pass_, model, context.with_units(frozenset([unit])))
        done(1)
        if isinstance(candidate, str):
            screens[unit] = alone(candidate)
            continue
        try:
            builder.add(unit, candidate)
        except UnionError as e:
            log.debug("%s runs on its own: %s", unit, e)
            screens[unit] = alone(candidate)
            continue
        if builder.variants == per_group:
            run_union()
            builder = UnionBuilder()
    if builder.variants:
        run_union()
    return {unit: screens[unit] for unit in units}


def _candidate(pass_: PassBase, model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto | str:
    """The pass's result with one unit, or why there is none."""
    free_copies(model)
    try:
        result = pass_(copy_model(model), context)
    except PreconditionError as e:
        return str(e)
    except Exception as e:
        log.info("pass %s raised on one unit", pass_.name, exc_info=True)
        return f"pass raised {type(e).__name__}: {first_line(e)}"
    return result.model if result.modified else "changes nothing"


def _together(union: ModelUnion, data: Dataset, per_sample: bool, context: PassContext,
              judged: Callable[[Outputs], Screen]) -> dict[str, Screen]:
    """Screen every variant of ``union`` from one run of it."""
    outputs, _ = run_dataset(create_session(union.model, context.runtime), data, context.runtime,
                             per_sample=per_sample, progress=context.progress,
                             label=f"rank {len(union.outputs)} units together")
    return {variant: judged({own: outputs[name] for own, name in names.items()})
            for variant, names in union.outputs.items()}


def _bytes(outputs: Outputs) -> int:
    return sum(_output_bytes(output) for output in outputs.values())


def _output_bytes(output: Output) -> int:
    if isinstance(output, RaggedOutput):
        return sum(sample.nbytes for sample in output.samples)
    return int(output.nbytes)
