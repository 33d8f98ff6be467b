"""What a user reads: tables that fit the terminal and say why, one number format, --version, --help with
defaults, a readable pass listing, and a default pipeline that a plugin cannot change."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES

import graphopt
from graphopt import perf, registry
from graphopt.api import DEFAULT_PIPELINE
from graphopt.cli import main
from graphopt.perf import Latency
from graphopt.report.render import format_count, format_number, render_table
from graphopt_passes.zero_weight_elimination import ZeroWeightEliminationPass


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _int8_slower(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
    """Float 1 ms, any model with int8 in it 1.12 ms."""
    times = [1.12 if any(n.op_type == "QuantizeLinear" for n in m.graph.node) else 1.0 for m in models]
    return [Latency(t, t, 20) for t in times]


@pytest.mark.parametrize("columns", [100, 80])
def test_the_table_fits_the_terminal_and_a_declined_row_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 columns: int) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(perf, "measure_latency", _int8_slower)
    (tmp_path / "a-rather-long-output-name").mkdir()
    code, stdout, _ = call(capsys, "optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data",
                           str(EXAMPLES / "digits.npz"), "-o", str(tmp_path / "a-rather-long-output-name" / "o.onnx"),
                           "--passes", "zero-weight-elimination,qdq-int8")
    assert code == 0
    lines = stdout.splitlines()
    assert max(map(len, lines)) <= columns, max(lines, key=len)
    assert "int8 1.12× slower here" in " ".join(line.strip() for line in lines)
    assert "e+0" not in stdout and "150.5 KB →" in stdout and "38.3k →" in stdout
    declined = json.loads((tmp_path / "a-rather-long-output-name" / "o.report.json").read_text())["passes"][2]
    assert declined["status"] == "declined" and declined["reason"].endswith("speed_check=note would keep it")


def test_goal_plans_fit_the_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "measure_latency", _int8_slower)
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    report = graphopt.optimize(model, str(EXAMPLES / "digits.npz"), goal="latency").report
    text = render_table(report, 90)
    assert max(map(len, text.splitlines())) <= 90
    assert "lossless passes: fast-prelu,zero-weight-elimination" in text and "qdq-int8{mode=dynamic}" in text


@pytest.mark.parametrize(("value", "text"), [(6775, "6775"), (38_300, "38.3k"), (154_100, "154.1k"),
                                             (1_572_864, "1.57M"), (2.1e9, "2.10G"), (0.0123, "0.0123"),
                                             (153.43, "153.4"), (1.5e-6, "1.5e-06"), (12.0, "12")])
def test_one_number_format(value: float, text: str) -> None:
    assert format_number(value) == text
    assert format_count(None) == "-"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = call(capsys, "--version")
    assert code == 0 and stdout.startswith(f"graphopt {graphopt.__version__} (onnxruntime ")
    assert graphopt.__version__ == graphopt.api.graphopt_version() != "0+unknown"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = call(capsys, "optimize", "--help")
    flat = " ".join(stdout.split())
    assert code == 0
    assert "minimum mean cosine vs the original (default: 0.99)" in flat
    assert "(default: 0.5)" in flat and "(default: None)" not in flat and "(default: False)" not in flat


def test_passes_listing_fits_and_names_the_choices(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, stdout, _ = call(capsys, "passes")
    flat = " ".join(stdout.split())
    assert code == 0 and max(map(len, stdout.splitlines())) <= 100
    assert "mode=static (one of static, dynamic)" in flat and "levels= (tuple of float)" in flat
    assert "ratio=none (float | None)" in flat
    code, stdout, _ = call(capsys, "passes", "--json")
    listing = json.loads(stdout)
    mode = listing["qdq-int8"]["options"]["mode"]
    assert mode["type"] == "choice" and mode["choices"] == ["static", "dynamic"] and mode["default"] == "static"
    assert listing["qdq-int8"]["options"]["per_channel"]["type"] == "bool"
    assert "<class" not in stdout


class PluginCleanup(ZeroWeightEliminationPass):
    """A third party's lossless pass: it runs when named, never by default."""

    name = "plugin-cleanup"


def test_a_plugin_does_not_change_the_default_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = registry.entry_points(group=registry.ENTRY_POINT_GROUP)
    plugin = EntryPoint("plugin-cleanup", f"{__name__}:PluginCleanup", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed, plugin])
    registry.available_passes.cache_clear()
    try:
        model = onnx.load(EXAMPLES / "digits_cnn.onnx")
        data = str(EXAMPLES / "digits.npz")
        ran = [p.name for p in graphopt.optimize(model, data).report.passes]
        assert ran == ["normalize", *DEFAULT_PIPELINE, "drop-inferred-shapes"]
        named = [p.name for p in graphopt.optimize(model, data, passes="plugin-cleanup").report.passes]
        assert "plugin-cleanup" in named
    finally:
        registry.available_passes.cache_clear()
