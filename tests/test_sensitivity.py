"""Each unit's damage alone, measured on one union of the candidates: the same screens as one run per candidate."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
import pytest
from helpers import mlp
from onnx import numpy_helper

from graphopt import sensitivity
from graphopt.data import Dataset
from graphopt.graph import copy_model
from graphopt.pass_base import PassBase, PassContext, PassResult, Unit
from graphopt.runtime import create_session, run_dataset
from graphopt.verify.output_kinds import output_kinds
from graphopt.verify.screening import screen
from graphopt.verify.tolerance import Tolerance


class Scales(PassBase):
    """Scales each initializer (a unit each); ``w2`` flips sign, ``boom`` raises, ``none`` changes nothing, and
    ``opset`` also raises the opset (its candidate cannot join the others' union)."""

    name = "test-scales"
    factors: ClassVar[dict[str, float]] = {"w1": 1.01, "b1": 1.2, "w2": -1.0, "b2": 0.9}

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        return tuple(Unit(n) for n in [*self.factors, "boom", "none", "opset"])

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        if context.selects("boom") and context.only_units is not None:
            raise ZeroDivisionError("boom")
        out = copy_model(model)
        for tensor in out.graph.initializer:
            if context.selects(tensor.name):
                array = numpy_helper.to_array(tensor) * np.float32(self.factors[tensor.name])
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        if context.selects("opset"):
            out.opset_import[0].version = 18
            out.graph.initializer[0].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(out.graph.initializer[0]) * np.float32(1.05), out.graph.initializer[0].name))
        changed = context.only_units is None or bool(context.only_units - {"none"})
        return PassResult(out, changed)


@pytest.fixture
def data(rng: np.random.Generator) -> Dataset:
    return Dataset({"x": rng.standard_normal((24, 8)).astype(np.float32)}, frozenset(), batchable=True)


def _one_by_one(model: onnx.ModelProto, data: Dataset, unit: str) -> float:
    """The badness of ``unit``'s candidate run in a session of its own."""
    candidate = Scales()(model, PassContext().with_units(frozenset([unit]))).model
    reference, _ = run_dataset(create_session(model), data)
    outputs, _ = run_dataset(create_session(candidate), data)
    return screen(reference, outputs, Tolerance.budget(), output_kinds(model)).badness


@pytest.mark.parametrize("output_bytes", [sensitivity.OUTPUT_BYTES, 1])
def test_the_union_screens_each_unit_as_its_own_session_would(
        data: Dataset, output_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the candidates share one union or (outputs too large to hold at once) each gets its own, every
    unit's badness is the one its candidate run alone gets; a unit whose pass raises or changes nothing cannot be
    ranked and says why; a candidate the union refuses runs on its own."""
    monkeypatch.setattr(sensitivity, "OUTPUT_BYTES", output_bytes)
    alone: list[onnx.ModelProto] = []  # the candidates run in a session of their own (checked first)
    check = sensitivity.check_model
    monkeypatch.setattr(sensitivity, "check_model", lambda candidate, *rest: alone.append(candidate) or check(
        candidate, *rest))
    model = mlp()
    units = [u.name for u in Scales().units(model, PassContext())]
    done: list[int] = []
    screens = sensitivity.measure_alone(Scales(), model, units, PassContext(), data, Tolerance.budget(),
                                        output_kinds(model), done.append)
    assert list(screens) == units and len(done) == len(units)
    for unit in ["w1", "b1", "b2", "opset"]:
        assert screens[unit].failure == "" and screens[unit].samples == 24
        assert screens[unit].badness == pytest.approx(_one_by_one(model, data, unit), rel=1e-9, abs=1e-12)
    assert screens["w1"].badness < screens["b1"].badness
    assert screens["w2"].failure.startswith("logits: cosine ")
    assert screens["boom"].failure == "pass raised ZeroDivisionError: boom" and screens["boom"].badness == np.inf
    assert screens["none"].failure == "changes nothing"
    assert [m.opset_import[0].version for m in alone] == ([18] if output_bytes > 1 else [])
