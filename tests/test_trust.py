"""The trust contract at the command line: no path loses a user's file, no number disables the budget, no input
crashes or hangs.

Each case runs ``graphopt`` in-process (or as a process where a signal or a start-up matters) on inputs built in
the test, and asserts the documented exit code, exactly one ``graphopt: error:`` line on stderr, that nothing was
written, and that every input is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES
from onnx import helper, numpy_helper

import graphopt
from graphopt import data as data_module
from graphopt import modelio
from graphopt._proto import save_model_file
from graphopt.cli import main
from graphopt.errors import ToleranceError, UsageError

PREFIX = "graphopt: error: "


def _digests(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (links not followed) and a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if not p.is_symlink() and not p.is_fifo()}


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(capfd: pytest.CaptureFixture[str], folder: Path, argv: Sequence[str], code: int) -> str:
    """Run the CLI, assert it exits ``code`` with one error line, writes nothing and changes no file."""
    before, names = _digests(folder), _listing(folder)
    got = main([*argv, "--threads", "1"])
    err = capfd.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and err[0].startswith(PREFIX), err
    assert _listing(folder) == names, "a refused run wrote files"
    assert _digests(folder) == before, "a refused run changed an input"
    return err[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a model whose weights live in ``w.bin``, its data, the digits CNN and its data and labels."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "w")  # 1 KiB: saved outside
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    save_model_file(model, tmp_path / "m.onnx", external=True, location="w.bin")
    np.savez(tmp_path / "m.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    for name in ("digits_cnn.onnx", "digits.npz", "digits_labels.npy"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    return tmp_path


# --- outputs never overwrite an input or each other -------------------------------------------------------------


COLLISIONS: dict[str, Callable[[Path], list[str]]] = {
    "-o is the input's external data": lambda w: ["m.onnx", "-o", "w.bin"],
    "--report is the input's external data": lambda w: ["m.onnx", "-o", "o.onnx", "--report", "w.bin"],
    "--html is the input's external data": lambda w: ["m.onnx", "-o", "o.onnx", "--html", "w.bin"],
    "--report is -o": lambda w: ["m.onnx", "-o", "o.onnx", "--report", "o.onnx"],
    "--html is -o": lambda w: ["m.onnx", "-o", "o.onnx", "--html", "./o.onnx"],
    "--html is --report": lambda w: ["m.onnx", "-o", "o.onnx", "--report", "r.json", "--html", "r.json"],
    "--html is the default report": lambda w: ["m.onnx", "-o", "o.onnx", "--html", "o.report.json"],
    "--report is -o's external data file": lambda w: ["m.onnx", "-o", "o.onnx", "--report", "o.onnx.data"],
    "-o is the data file": lambda w: ["m.onnx", "--data", "m.npz", "-o", "m.npz"],
    "--report is the data file": lambda w: ["m.onnx", "--data", "m.npz", "-o", "o.onnx", "--report", "m.npz"],
    "-o is a symlink to the input": lambda w: (os.symlink(w / "m.onnx", w / "link.onnx"), ["m.onnx", "-o", "link.onnx"])[1],
    "-o is a hard link to the input": lambda w: (os.link(w / "m.onnx", w / "hard.onnx"), ["m.onnx", "-o", "hard.onnx"])[1],
    "-o is a hard link to the data": lambda w: (os.link(w / "m.npz", w / "hard.npz"),
                                                ["m.onnx", "--data", "m.npz", "-o", "hard.npz"])[1],
    "--html is a symlink to the external data": lambda w: (os.symlink(w / "w.bin", w / "page.html"),
                                                           ["m.onnx", "-o", "o.onnx", "--html", "page.html"])[1],
    "-o is a file of a data folder": lambda w: ((w / "samples").mkdir(), os.replace(w / "m.npz", w / "samples" / "a.npz"),
                                                ["m.onnx", "--data", "samples", "-o", "samples/a.npz"])[2],
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_outputs_never_overwrite_inputs_or_each_other(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.chdir(work)
    argv = COLLISIONS[case](work)
    line = _refused(capfd, work, ["optimize", *argv], 4)
    assert "refusing to write" in line


@pytest.mark.parametrize("argv", [
    ["--report", "digits_cnn.onnx"],
    ["--html", "digits.npz"],
    ["--report", "digits_labels.npy", "--labels", "digits_labels.npy"],
    ["--report", "same.json", "--html", "same.json"],
])
def test_validate_outputs_never_overwrite_inputs(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(work)
    os.link(work / "digits_cnn.onnx", work / "copy.onnx")  # the "optimised" model: a hard link to the original
    _refused(capfd, work, ["validate", "digits_cnn.onnx", "copy.onnx", "--data", "digits.npz", *argv], 4)


def test_an_ordinary_run_still_writes_beside_its_inputs(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _digests(work)
    assert main(["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), "--threads", "1"]) == 0
    assert (work / "o.onnx").is_file() and (work / "o.report.json").is_file()
    assert {k: v for k, v in _digests(work).items() if k in before} == before


# --- signals ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sigint_delivered() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process, as it does in a terminal: a suite started in the background
    (``nohup … &``) inherits SIGINT ignored, and graphopt, like any program, then keeps ignoring it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_delivered")
@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGTERM, 143, "terminated"),
                                                      (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_staging_cleans_up(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, signum: int, code: int,
    word: str,
) -> None:
    staged: list[Path] = []
    check = modelio._check_file

    def signalled_while_checking(path: Path, runtime: object) -> None:
        staged.append(path)
        assert path.parent.name.startswith(".graphopt-") and path.is_file()  # a full model is staged now
        os.kill(os.getpid(), signum)
        check(path, runtime)  # type: ignore[arg-type]

    monkeypatch.setattr(modelio, "_check_file", signalled_while_checking)
    before = _listing(work)
    got = main(["optimize", str(work / "digits_cnn.onnx"), "--data", str(work / "digits.npz"),
                "-o", str(work / "out.onnx"), "--threads", "1"])
    assert staged, "the run never reached staging"
    assert got == code
    assert capfd.readouterr().err.strip().splitlines() == [f"graphopt: {word}"]
    assert _listing(work) == before  # no .graphopt-* folder, no output


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_exits_with_one_line(work: Path, signum: int, code: int) -> None:
    """The command's imports (onnx, onnxruntime) take about two seconds; a signal at 0.2 s lands inside them."""
    script = textwrap.dedent(f"""
        import os, signal, sys, threading
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal delivers it, whoever started us
        threading.Timer(0.2, os.kill, (os.getpid(), {int(signum)})).start()
        from graphopt.__main__ import main
        sys.argv = ["graphopt", "optimize", "digits_cnn.onnx", "--data", "digits.npz", "-o", "out.onnx"]
        sys.exit(main())
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, cwd=work, capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (work / "out.onnx").exists()


# --- budgets that a bad number would disable ------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [
    ["--cosine", "nan"], ["--top1", "nan"], ["--snr-db", "nan"], ["--cosine", "-1"], ["--cosine", "1.5"],
    ["--top1", "2"], ["--atol", "-1"], ["--atol", "nan"], ["--rtol", "-0.1"], ["--snr-db", "inf"],
    ["--lossless-atol", "nan"], ["--lossless-rtol", "-1"], ["--calibration-fraction", "nan"],
])
def test_optimize_refuses_a_budget_that_is_not_a_number_in_range(
    work: Path, capfd: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    argv = ["optimize", str(work / "digits_cnn.onnx"), "--data", str(work / "digits.npz"),
            "--passes", "weight-clustering{clusters=2}", "-o", str(work / "out.onnx"), *flag]
    _refused(capfd, work, argv, 2)


@pytest.mark.parametrize("flag", [["--cosine", "nan"], ["--top1", "-1"], ["--max-accuracy-drop", "nan"],
                                  ["--max-accuracy-drop", "-0.5"]])
def test_validate_refuses_a_budget_that_is_not_a_number_in_range(
    work: Path, capfd: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    argv = ["validate", str(work / "digits_cnn.onnx"), str(work / "digits_cnn.onnx"), "--data",
            str(work / "digits.npz"), "--report", str(work / "r.json"), *flag]
    _refused(capfd, work, argv, 2)


@pytest.mark.parametrize("fields", [{"cosine": float("nan")}, {"cosine": -1.0}, {"top1": float("nan")},
                                    {"snr_db": float("nan")}, {"atol": -1e-3}, {"rtol": float("inf")},
                                    {"cosine": "0.99"}, {"per_output": {"y": {"cosine": 0.5}}}])
def test_every_tolerance_built_through_the_api_is_checked(fields: dict[str, object]) -> None:
    with pytest.raises(ToleranceError):
        graphopt.Tolerance(**fields)  # type: ignore[arg-type]


def test_the_api_refuses_a_bad_calibration_fraction_and_accuracy_drop(work: Path) -> None:
    for fraction in (float("nan"), 0.0, 1.0):
        with pytest.raises(UsageError, match="calibration fraction"):
            graphopt.optimize(work / "digits_cnn.onnx", work / "digits.npz", calibration_fraction=fraction)
    with pytest.raises(ToleranceError, match="max_accuracy_drop"):
        graphopt.validate(work / "digits_cnn.onnx", work / "digits_cnn.onnx", work / "digits.npz",
                          max_accuracy_drop=float("nan"))


def test_lossy_passes_without_data_are_a_usage_error(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    line = _refused(capfd, work, ["optimize", str(work / "digits_cnn.onnx"), "--passes",
                                  "zero-weight-elimination,qdq-int8", "-o", str(work / "out.onnx")], 2)
    assert "qdq-int8" in line and "--data" in line
    with pytest.raises(UsageError):
        graphopt.optimize(work / "digits_cnn.onnx", passes="neuron-pruning")
    assert main(["optimize", str(work / "digits_cnn.onnx"), "--passes", "zero-weight-elimination",
                 "-o", str(work / "lossless.onnx"), "--threads", "1"]) == 0


# --- external data that must be refused in one line -------------------------------------------------------------


def _external_model(folder: Path, **fields: str) -> Path:
    """A MatMul whose 4x4 weight lives in external data described by ``fields`` (location, offset, length)."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "0", "length": "64", **fields}.items():
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [weight])
    path = folder / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


EXTERNAL: dict[str, dict[str, str]] = {
    "NUL in the location": {"location": "w\0.bin"},
    "negative offset": {"offset": "-64"},
    "non-integer offset": {"offset": "1.5"},
    "negative length": {"length": "-1"},
    "non-integer length": {"length": "sixty-four"},
    "5,000-character location": {"location": "a" * 5000},
    "length beyond the tensor": {"length": "128"},
    "empty location": {"location": ""},
    "a folder": {"location": "sub"},
}


@pytest.mark.parametrize("case", list(EXTERNAL))
def test_malformed_external_data_is_refused_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    (tmp_path / "w.bin").write_bytes(np.ones((8, 4), np.float32).tobytes())
    (tmp_path / "sub").mkdir()
    path = _external_model(tmp_path, **EXTERNAL[case])
    _refused(capfd, tmp_path, ["optimize", str(path), "-o", str(tmp_path / "out.onnx")], 3)


def test_external_data_hard_linked_from_outside_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones((4, 4), np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    os.link(secret, folder / "w.bin")
    line = _refused(capfd, tmp_path, ["optimize", str(_external_model(folder)), "-o", str(folder / "out.onnx")], 3)
    assert "hard link" in line


def test_sparse_initializer_external_data_goes_through_the_folder_check(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.int64).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    values = numpy_helper.from_array(np.ones(4, np.float32), "w")
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_indices")
    indices.ClearField("raw_data")
    indices.data_location = onnx.TensorProto.EXTERNAL
    indices.external_data.add(key="location", value="../secret.bin")
    sparse = helper.make_sparse_tensor(values, indices, [4, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])])
    graph.sparse_initializer.append(sparse)
    path = folder / "sparse.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert "outside" in _refused(capfd, tmp_path, ["optimize", str(path), "-o", str(folder / "out.onnx")], 3)


# --- data files that would hang or exhaust memory -----------------------------------------------------------------


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of hanging for ever if a FIFO is opened for reading."""
    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError("graphopt blocked on a FIFO")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("where", ["data", "inside a data folder", "labels"])
def test_fifos_are_refused_not_read(
    work: Path, capfd: pytest.CaptureFixture[str], no_hang: None, where: str
) -> None:
    model, data = work / "digits_cnn.onnx", work / "digits.npz"
    argv = ["validate", str(model), str(model), "--report", str(work / "r.json")]
    if where == "data":
        os.mkfifo(work / "fifo.npz")
        argv += ["--data", str(work / "fifo.npz")]
    elif where == "inside a data folder":
        (work / "samples").mkdir()
        os.mkfifo(work / "samples" / "b.npz")
        argv += ["--data", str(work / "samples")]
    else:
        os.mkfifo(work / "fifo.npy")
        argv += ["--data", str(data), "--labels", str(work / "fifo.npy")]
    assert "not a regular file" in _refused(capfd, work, argv, 5)


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def test_a_header_claiming_a_trillion_samples_is_refused_before_allocating(
    work: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (work / "huge.npy").write_bytes(_npy_header("<f4", (10**12, 1, 8, 8)) + b"\0" * 1024)
    with zipfile.ZipFile(work / "huge.npz", "w") as archive:
        archive.writestr("image.npy", _npy_header("<f4", (10**12, 1, 8, 8)) + b"\0" * 1024)
    for name in ("huge.npy", "huge.npz"):
        line = _refused(capfd, work, ["optimize", str(work / "digits_cnn.onnx"), "--data", str(work / name),
                                      "-o", str(work / "out.onnx")], 5)
        assert "header declares" in line


def test_a_member_inflating_past_memory_is_refused(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 160 MB member of zeros (deflated to 150 KB) on a machine said to have 256 MiB free: checked before it is
    inflated (the rule is a quarter of available memory; the real check reads /proc/meminfo)."""
    count = 160 * 2**20 // (8 * 8 * 4)
    with zipfile.ZipFile(work / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("image.npy", "w", force_zip64=True) as member:
        member.write(_npy_header("<f4", (count, 1, 8, 8)))
        zeros = bytes(2**22)
        for _ in range(160 * 2**20 // len(zeros)):
            member.write(zeros)
    monkeypatch.setattr(data_module, "_available_memory", lambda: 256 * 2**20)
    line = _refused(capfd, work, ["optimize", str(work / "digits_cnn.onnx"), "--data", str(work / "bomb.npz"),
                                  "-o", str(work / "out.onnx")], 5)
    assert "memory" in line


@pytest.mark.parametrize("dims", [[1, 2**40], [2**20, 2**20, 4], [-7, 2**36]])
def test_random_data_for_huge_declared_inputs_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], dims: list[int]
) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    line = _refused(capfd, tmp_path, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx")], 5)
    assert "--data random" in line


# --- negative dims are dynamic ----------------------------------------------------------------------------------


def test_a_minus_one_batch_dim_is_dynamic(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """PaddlePaddle declares dynamic dims as ``dim_value: -1``; onnxruntime runs them as dynamic, so does graphopt."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0)], "paddle",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 8])],
        [numpy_helper.from_array(kernel, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((64, 3, 48, 192)).astype(np.float32))
    got = main(["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o",
                str(tmp_path / "o.onnx"), "--threads", "1"])
    assert got == 0, capfd.readouterr().err
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    result = graphopt.optimize(tmp_path / "m.onnx", tmp_path / "d.npz")
    assert result.report.passes[0].stats["negative_dims_to_dynamic"] == 4  # 3 input dims, 1 output dim
    assert data_module.input_specs(onnx.load(tmp_path / "m.onnx"))[0].shape == (None, 3, None, None)


# --- onnxruntime's and numpy's own output stays out of the one-line contract ----------------------------------------


def test_an_execution_provider_that_is_not_installed_is_a_usage_error(
    work: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime would warn, print an "EP Error" banner on stdout and silently verify on the CPU instead."""
    before = _listing(work)
    got = main(["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), "--provider", "NoSuchExecutionProvider"])
    captured = capfd.readouterr()
    assert got == 2 and captured.out == ""
    available = ", ".join(ort.get_available_providers())
    assert captured.err.strip().splitlines() == [
        f"{PREFIX}execution provider NoSuchExecutionProvider is not in this onnxruntime (available: {available})"]
    assert _listing(work) == before


def test_numpy_warnings_do_not_reach_stderr(work: Path) -> None:
    """A numpy overflow warning raised inside a command (the NaN rule judges such results) stays off stderr; with
    -v it is logged. Run as a process: pytest would capture warnings itself."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from graphopt import api
        real = api.optimize
        def overflowing(*args, **kwargs):
            np.float32(3e38) * np.float32(10)  # RuntimeWarning: overflow encountered in scalar multiply
            return real(*args, **kwargs)
        api.optimize = overflowing
        from graphopt.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = [sys.executable, "-c", script, "optimize", "m.onnx", "-o", "o.onnx", "--threads", "1"]
    quiet = subprocess.run(argv, check=False, cwd=work, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    verbose = subprocess.run([*argv[:3], "-v", *argv[3:]], check=False, cwd=work, capture_output=True, text=True,
                             timeout=120)
    assert verbose.returncode == 0 and "overflow encountered" in verbose.stderr
