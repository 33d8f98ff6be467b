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
from helpers import EXAMPLES, RecordedProgress

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


def test_a_run_repeats_from_its_report_or_a_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report holds the pipeline as it ran, every option's value; ``--passes`` takes that report, or a TOML
    file of the same ``pipeline`` list, and makes the same model."""
    model, data = str(EXAMPLES / "digits_cnn.onnx"), str(EXAMPLES / "digits.npz")
    code, _, _ = call(capsys, "optimize", model, "--data", data, "-o", str(tmp_path / "a.onnx"), "--passes",
                      "zero-weight-elimination,weight-clustering{clusters=8,levels=16;8}")
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert code == 0 and [p["name"] for p in report["pipeline"]] == ["zero-weight-elimination", "weight-clustering"]
    clustering = report["pipeline"][1]["options"]
    assert clustering["clusters"] == 8 and clustering["levels"] == [16, 8] and "min_size" in clustering
    lines = []
    for entry in report["pipeline"]:
        lines += ["[[pipeline]]", f'name = "{entry["name"]}"', "[pipeline.options]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry["options"].items() if value is not None]
    (tmp_path / "pipeline.toml").write_text("\n".join(lines) + "\n")
    for source, out in ((tmp_path / "pipeline.toml", "b.onnx"), (tmp_path / "a.report.json", "c.onnx")):
        code, _, err = call(capsys, "optimize", model, "--data", data, "-o", str(tmp_path / out), "--passes",
                            str(source))
        assert code == 0, err
        assert onnx.load(tmp_path / out).graph == onnx.load(tmp_path / "a.onnx").graph
        repeated = json.loads((tmp_path / out.replace(".onnx", ".report.json")).read_text())
        assert repeated["pipeline"] == report["pipeline"]


@pytest.mark.parametrize(("text", "message"), [
    ('[[pipeline]]\nname = "qdq-int8"\n[pipeline.options]\nmode = "fast"\n', "qdq-int8.mode must be one of"),
    ('[[pipeline]]\nname = "qdq-int8"\n[pipeline.options]\nspeed = 1\n', "has no option 'speed'"),
    ('[[pipeline]]\nname = "no-such-pass"\n', "unknown pass 'no-such-pass'"),
    ("pipeline = 3\n", "needs a 'pipeline' list"),
    ('[[pipeline]]\nname = "qdq-int8"\nextra = 1\n', "each entry has a 'name'"),
    ("[[pipeline]\n", "cannot read pipeline file"),
])
def test_a_bad_pipeline_file_is_one_line_with_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                     message: str) -> None:
    (tmp_path / "p.toml").write_text(text)
    code, _, err = call(capsys, "optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(EXAMPLES / "digits.npz"),
                        "-o", str(tmp_path / "o.onnx"), "--passes", str(tmp_path / "p.toml"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_the_pipeline_file_is_an_input_never_written_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Repeating a run from ``out.report.json`` into ``out.onnx`` would write the new report over it: refused."""
    model, data = str(EXAMPLES / "digits_cnn.onnx"), str(EXAMPLES / "digits.npz")
    assert call(capsys, "optimize", model, "--data", data, "-o", str(tmp_path / "out.onnx"))[0] == 0
    before = (tmp_path / "out.report.json").read_bytes()
    code, _, err = call(capsys, "optimize", model, "--data", data, "-o", str(tmp_path / "out.onnx"), "--passes",
                        str(tmp_path / "out.report.json"))
    assert code == 4 and "it is the pipeline file" in err and err.count("\n") == 1
    assert (tmp_path / "out.report.json").read_bytes() == before


def test_a_pipeline_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(graphopt.pipeline, "MAX_PIPELINE_FILE_BYTES", 16)
    (tmp_path / "p.toml").write_text('[[pipeline]]\nname = "zero-weight-elimination"\n')
    code, _, err = call(capsys, "optimize", str(EXAMPLES / "digits_cnn.onnx"), "-o", str(tmp_path / "o.onnx"),
                        "--passes", str(tmp_path / "p.toml"))
    assert code == 2 and "is over" in err and err.count("\n") == 1
    monkeypatch.setattr(graphopt.pipeline, "MAX_PIPELINE_FILE_BYTES", 1 << 20)
    assert call(capsys, "optimize", str(EXAMPLES / "digits_cnn.onnx"), "-o", str(tmp_path / "o.onnx"), "--passes",
                str(tmp_path / "p.toml"))[0] == 0


def test_quiet_prints_nothing_and_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = call(capsys, "-q", "optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data",
                             str(EXAMPLES / "digits.npz"), "-o", str(tmp_path / "o.onnx"))
    assert code == 0 and stdout == "" and err == ""
    assert (tmp_path / "o.onnx").exists() and (tmp_path / "o.report.json").exists()


def test_progress_names_the_running_pass_and_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass opens a task named after it; its calibration, verification, trials and timing open theirs inside
    it, so a terminal shows which pass is running and what it is doing."""
    monkeypatch.setattr(perf, "measure_latency", _int8_slower)
    progress = RecordedProgress()
    graphopt.optimize(onnx.load(EXAMPLES / "digits_cnn.onnx"), str(EXAMPLES / "digits.npz"),
                      passes="zero-weight-elimination,qdq-int8", progress=progress)
    opened = progress.labels
    passes = [label for label in opened if label.startswith("pass ")]
    assert passes == ["pass normalize", "pass zero-weight-elimination", "pass qdq-int8", "pass drop-inferred-shapes"]
    after = opened[opened.index("pass qdq-int8"):opened.index("pass drop-inferred-shapes")]
    assert any(label.startswith("time qdq-int8 against its input (") for label in after), after
    assert any(label.startswith("verify qdq-int8") for label in after), after


def test_log_file_takes_the_log_and_replaces_an_old_one_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    log = tmp_path / "run.log"
    log.write_text("an earlier run's log\n")
    code, _, err = call(capsys, "-v", "--log-file", str(log), "optimize", str(EXAMPLES / "digits_cnn.onnx"), "-o",
                        str(tmp_path / "o.onnx"))
    text = log.read_text()
    assert code == 0 and "an earlier run's log" not in text
    assert f"INFO graphopt.modelio: wrote {tmp_path / 'o.onnx'}" in text and "INFO" not in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".graphopt-")] == [], "no staging left behind"
    code, _, err = call(capsys, "--log-file", str(log), "optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data",
                        str(tmp_path / "missing.npz"), "-o", str(tmp_path / "o2.onnx"))
    assert code == 5 and err.count("\n") == 1 and log.exists(), "a failed run keeps its log"
    assert not (tmp_path / "o2.onnx").exists()


def test_log_file_is_never_an_input_nor_another_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes((EXAMPLES / "digits_cnn.onnx").read_bytes())
    before = model.read_bytes()
    for log, what in ((model, "it is the input model"), (tmp_path / "o.onnx", "it is the output model"),
                      (tmp_path / "o.report.json", "it is the report"), (EXAMPLES / "digits.npz", "a data file")):
        code, _, err = call(capsys, "--log-file", str(log), "optimize", str(model), "--data",
                            str(EXAMPLES / "digits.npz"), "-o", str(tmp_path / "o.onnx"))
        assert code == 4 and what in err and err.count("\n") == 1, err
    assert model.read_bytes() == before and not (tmp_path / "o.onnx").exists()
    code, _, err = call(capsys, "--log-file", str(tmp_path / "v.log"), "validate", str(model), str(model), "--data",
                        str(model))
    assert code != 0 and err.count("\n") == 1 and model.read_bytes() == before
    code, _, err = call(capsys, "--log-file", str(tmp_path / "p.log"), "passes")
    assert code == 2 and "applies to optimize and validate" in err and not (tmp_path / "p.log").exists()
