"""The command line: the quick-start job, listings, and one-line errors for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, mlp

import graphopt
from graphopt.cli import main


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_quick_start_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    code, stdout, _ = call(
        capsys, "optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(EXAMPLES / "digits.npz"), "-o", str(out)
    )
    assert code == 0
    assert "zero-weight-elimination" in stdout and "worst vs original" in stdout
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["normalize", "fast-prelu", "zero-weight-elimination",
                                                     "drop-inferred-shapes"]
    assert report["passes"][1]["status"] == "skipped"  # no PRelu in it
    zwe = report["passes"][2]
    assert zwe["status"] == "applied" and zwe["params_after"] < zwe["params_before"]
    assert all(v["passed"] for v in zwe["verifications"])
    onnx.checker.check_model(str(out), full_check=True)


def test_cli_and_api_give_the_same_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(EXAMPLES / "digits_cnn.onnx"), str(EXAMPLES / "digits.npz")
    code, stdout, _ = call(capsys, "optimize", model, "--data", data, "-o", str(tmp_path / "cli.onnx"), "--json")
    assert code == 0
    from_cli = json.loads(stdout)
    from_api = graphopt.optimize(model, data, output=tmp_path / "api.onnx")
    assert (tmp_path / "cli.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()
    strip = lambda r: [(p["name"], p["status"], p["stats"], p["params_after"]) for p in r["passes"]]
    assert strip(from_cli) == strip(from_api.report.to_dict())


def test_passes_and_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = call(capsys, "passes")
    assert code == 0 and "zero-weight-elimination" in stdout and "lossless" in stdout
    code, stdout, _ = call(capsys, "passes", "--json")
    assert json.loads(stdout)["zero-weight-elimination"]["lossless"] is True
    code, stdout, _ = call(capsys, "inspect", str(EXAMPLES / "digits_cnn.onnx"), "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["opsets"][""] == 17 and summary["ops"]["Conv"] == 2 and summary["params"] > 10_000
    code, stdout, _ = call(capsys, "inspect", str(EXAMPLES / "digits_cnn.onnx"))
    assert "input   image: float32" in stdout


def test_python_dash_m(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "graphopt", "passes"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "zero-weight-elimination" in done.stdout


def _bad_model(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "model.onnx"
    data = mlp().SerializeToString()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "not-onnx":
        path.write_bytes(onnx.helper.make_tensor("t", onnx.TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    elif kind == "opset-too-old":
        model = mlp()
        model.opset_import[0].version = 6
        onnx.save(model, path)
    elif kind == "opset-too-new":
        model = mlp()
        model.opset_import[0].version = 99
        onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("truncated", 3, "ONNX model"),
        ("random-bytes", 3, "ONNX model"),
        ("not-onnx", 3, "ONNX model"),
        ("opset-too-old", 3, "opset 6"),
        ("opset-too-new", 3, "opset 99"),
    ],
)
def test_bad_models(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, code: int, message: str) -> None:
    model = _bad_model(tmp_path, kind)
    out = tmp_path / "out.onnx"
    result, _, err = call(capsys, "optimize", str(model), "-o", str(out))
    assert result == code and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.report.json").exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"other": np.zeros((4, 8), np.float32)}, "no array for model input 'x'"),
        ({"x": np.zeros((4, 8), np.float32), "extra": np.zeros(4, np.float32)}, "not model inputs: extra"),
        ({"x": np.zeros((4, 8), np.int32)}, "input 'x': data is int32"),
        ({"x": np.zeros((4, 2, 2, 8), np.float32)}, "input 'x': data has shape"),
        ({"x": np.zeros((0, 8), np.float32)}, "zero samples"),
    ],
    ids=["missing-input", "extra-input", "wrong-dtype", "wrong-rank", "zero-samples"],
)
def test_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict, message: str) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **arrays)
    out = tmp_path / "out.onnx"
    code, _, err = call(capsys, "optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o", str(out))
    assert code == 5 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_paths_and_pipelines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    before = model.read_bytes()
    cases = [
        (["-o", str(model)], 4, "it is the input model"),
        (["-o", str(tmp_path / "no" / "such" / "out.onnx")], 4, "does not exist"),
        (["-o", "/proc/graphopt-out.onnx"], 4, "cannot write to /proc"),
        (["-o", str(tmp_path / "o.onnx"), "--passes", "no-such-pass"], 2, "unknown pass 'no-such-pass'"),
        (["-o", str(tmp_path / "o.onnx"), "--passes", "zero-weight-elimination{x=1}"], 2, "no option 'x'"),
        (["-o", str(tmp_path / "o.onnx"), "--calibration-fraction", "2"], 2, "calibration fraction"),
        (["-o", str(tmp_path / "o.onnx"), "--threads", "x"], 2, "invalid int value"),
    ]
    for extra, code, message in cases:
        result, _, err = call(capsys, "optimize", str(model), *extra)
        assert (result, message in err, len(err.strip().splitlines())) == (code, True, 1), (extra, err)
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    code, _, err = call(capsys, "optimize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert code == 3 and "model not found" in err


def test_terminal_progress_shows_k_of_n_and_the_time_left_and_nothing_off_a_terminal() -> None:
    import io

    from graphopt.cli import TerminalProgress

    screen = io.StringIO()
    progress = TerminalProgress(screen, force_terminal=True)
    with progress.task("narrow qdq-int8: trials (at most)", 10) as advance:
        advance(3)
        with progress.task("verify qdq-int8", 90) as verify:
            verify(90)
        assert progress.bars.live.is_started, "the outer task keeps the display when an inner one ends"
        progress.bars.refresh()
    assert not progress.bars.live.is_started
    shown = screen.getvalue()
    assert "narrow qdq-int8: trials (at most)" in shown and "3/10" in shown and "left" in shown
    piped = io.StringIO()
    with TerminalProgress(piped).task("calibration", 5) as advance:
        advance(5)
    assert piped.getvalue() == ""
