from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from graphopt import registry
from graphopt.errors import PipelineError
from graphopt.pass_base import PassBase, PassContext, PassResult
from graphopt.pipeline import PassSpec, build_pipeline, parse_pipeline


class Knobs(PassBase):
    """A pass with one option of each supported type."""

    name = "knobs"

    @dataclass(frozen=True)
    class Options:
        ratio: float = field(default=0.5, metadata={"help": "a float"})
        clusters: int = 16
        exact: bool = False
        mode: Literal["fast", "slow"] = "fast"
        limit: int | None = None
        layers: tuple[str, ...] = ()

    def run(self, model, context: PassContext) -> PassResult:
        return PassResult(model, False)


@pytest.fixture
def knobs_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "available_passes", lambda: {"knobs": Knobs})


def test_parse_pipeline() -> None:
    assert parse_pipeline("a, b{x=1, y=two},c{}") == [
        PassSpec("a", {}),
        PassSpec("b", {"x": "1", "y": "two"}),
        PassSpec("c", {}),
    ]


@pytest.mark.parametrize("text", ["a{x=1", "a}b", "a{{x=1}}", "a{x}", "a b"])
def test_malformed_pipelines(text: str) -> None:
    with pytest.raises(PipelineError):
        parse_pipeline(text)


def test_options_are_typed(knobs_registered: None) -> None:
    (knobs,) = build_pipeline("knobs{ratio=0.25,clusters=8,exact=true,mode=slow,limit=none,layers=a;b}")
    assert knobs.options == Knobs.Options(0.25, 8, True, "slow", None, ("a", "b"))
    assert repr(knobs) == "knobs{ratio=0.25,clusters=8,exact=True,mode=slow,layers=('a', 'b')}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "unknown pass 'nope'"),
        ("knobs{typo=1}", "no option 'typo'"),
        ("knobs{clusters=many}", "expects int"),
        ("knobs{exact=maybe}", "expects bool"),
        ("knobs{mode=medium}", "must be one of fast, slow"),
    ],
)
def test_bad_pipelines(knobs_registered: None, text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        build_pipeline(text)


def test_registered_passes_load_from_entry_points() -> None:
    passes = registry.available_passes()
    assert "zero-weight-elimination" in passes
    assert all(issubclass(cls, PassBase) and cls.name == name for name, cls in passes.items())
    assert all(cls.summary() for cls in passes.values())
