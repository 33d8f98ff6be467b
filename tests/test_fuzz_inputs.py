"""Fuzzed bad inputs through the command line (``graphopt.cli.main``, in-process).

Every corrupt model or data file either optimises to a model that passes ``onnx.checker`` (full) and loads in
onnxruntime, or fails with exactly one ``graphopt: error:`` line on stderr, the documented exit code (3 model,
5 data) and nothing written: never exit 1 or a traceback. Seeded loops, no hypothesis. Stderr is captured at the
file-descriptor level (``capfd``), so onnxruntime's native log lines would count too.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES

from graphopt.cli import main

MODEL_BYTES = (EXAMPLES / "digits_cnn.onnx").read_bytes()
DIGITS = EXAMPLES / "digits_cnn.onnx"
IMAGES = np.load(EXAMPLES / "digits.npz")["image"]
LABELS = np.load(EXAMPLES / "digits_labels.npy")
PREFIX = "graphopt: error: "
QUICK_VALIDATE = ["--skip", "folds,shifts,environments,performance"]


def _run(capfd: pytest.CaptureFixture[str], argv: Sequence[str]) -> tuple[int, list[str]]:
    code = main([*argv, "--threads", "1"])
    return code, capfd.readouterr().err.strip().splitlines()


def _problem(
    capfd: pytest.CaptureFixture[str], folder: Path, argv: Sequence[str], codes: set[int], written: Sequence[str]
) -> tuple[int, str | None]:
    """Run the CLI on the inputs in ``folder``; returns the exit code and a description of any broken promise.

    ``written`` names the files a successful run leaves in ``folder`` beside its inputs.
    """
    inputs = sorted(os.listdir(folder))
    try:
        code, err = _run(capfd, argv)
    except BaseException as e:  # noqa: BLE001 - the loop reports every variant that escapes main()
        return 1, f"raised {type(e).__name__}: {e}"
    files = sorted(os.listdir(folder))
    if code == 0:
        if files != sorted([*inputs, *written]):
            return code, f"success but wrote {files}"
        for name in written:
            if name.endswith(".onnx"):
                try:
                    onnx.checker.check_model(str(folder / name), full_check=True)
                    ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
                except Exception as e:  # noqa: BLE001
                    return code, f"success but the output is invalid: {type(e).__name__}: {e}"
        return code, None
    if code not in codes:
        return code, f"exit {code} (expected 0 or {sorted(codes)}): {err[-3:]}"
    if len(err) != 1 or not err[0].startswith(PREFIX):
        return code, f"stderr is not one '{PREFIX}' line: {err[:4]}"
    if files != inputs:
        return code, f"failed but left {sorted(set(files) - set(inputs))}"
    return code, None


def _optimize_model_bytes(
    capfd: pytest.CaptureFixture[str],
    folder: Path,
    content: bytes,
    data: str = "random",
    codes: frozenset[int] = frozenset({3}),
) -> tuple[int, str | None]:
    folder.mkdir()
    (folder / "m.onnx").write_bytes(content)
    argv = ["optimize", str(folder / "m.onnx"), "--data", data, "-o", str(folder / "out.onnx")]
    return _problem(capfd, folder, argv, set(codes), ["out.onnx", "out.report.json"])


def _weight_spans(content: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the initializers' raw data inside the serialised model."""
    model = onnx.load_model_from_string(content)
    return sorted((start := content.find(t.raw_data), start + len(t.raw_data)) for t in model.graph.initializer)


# --- models ---------------------------------------------------------------------------------------------------------


def test_truncated_models(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    spans = _weight_spans(MODEL_BYTES)
    mid_weights = [(a + b) // 2 for a, b in spans]
    edges = [a for a, _ in spans] + [b for _, b in spans]
    rng = np.random.default_rng(8)
    cuts = sorted({0, 1, 2, 3, 8, 16, 64, 256, len(MODEL_BYTES) - 2, len(MODEL_BYTES) - 1, *mid_weights, *edges,
                   *(int(c) for c in rng.integers(0, len(MODEL_BYTES), 24))})
    problems, codes = [], []
    for cut in cuts:
        code, problem = _optimize_model_bytes(capfd, tmp_path / f"cut{cut}", MODEL_BYTES[:cut])
        codes.append(code)
        if problem:
            problems.append(f"cut at {cut}: {problem}")
    assert not problems, "\n".join(problems)
    assert codes.count(3) >= len(cuts) - 2, "nearly every truncation must be refused as a model problem"


def test_bit_flipped_models(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Several hundred seeded single-bit flips: most in the protobuf structure (names, types, dims, attributes, tags,
    lengths), some in the float weights (exponent bits included, so some weights become huge, Inf or NaN)."""
    spans = _weight_spans(MODEL_BYTES)
    in_weights = np.zeros(len(MODEL_BYTES), bool)
    for a, b in spans:
        in_weights[a:b] = True
    structure = np.flatnonzero(~in_weights)
    weights = np.flatnonzero(in_weights)
    rng = np.random.default_rng(2026)
    positions = [*rng.choice(structure, 260, replace=False), *rng.choice(weights, 60, replace=False)]
    data = str(EXAMPLES / "digits.npz")
    problems, outcomes = [], {0: 0, 3: 0, 5: 0}
    for i, position in enumerate(positions):
        variant = bytearray(MODEL_BYTES)
        variant[position] ^= 1 << int(rng.integers(8))
        code, problem = _optimize_model_bytes(capfd, tmp_path / f"flip{i}", bytes(variant), data, frozenset({3, 5}))
        outcomes[code] = outcomes.get(code, 0) + 1
        if problem:
            problems.append(f"bit flip at byte {position}: {problem}")
    assert not problems, "\n".join(problems)
    assert outcomes[0] >= 60 and outcomes[3] >= 100, outcomes  # the fuzz reached both outcomes


def _zip_of_model() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("digits_cnn.onnx", MODEL_BYTES)
    return buffer.getvalue()


def _npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


NOT_ONNX: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "one-byte": lambda: b"\x08",
    "random-7": lambda: np.random.default_rng(1).bytes(7),
    "random-4k": lambda: np.random.default_rng(2).bytes(4096),
    "random-model-size": lambda: np.random.default_rng(3).bytes(len(MODEL_BYTES)),
    "zip": _zip_of_model,
    "gzip": lambda: gzip.compress(MODEL_BYTES),
    "npz": lambda: _npz_bytes(image=IMAGES[:4]),
    "text": lambda: b"this is not a model\n" * 20,
    "onnx-text-format": lambda: onnx.printer.to_text(onnx.load_model_from_string(MODEL_BYTES)).encode(),
    "json": lambda: b'{"ir_version": 8, "graph": {}}',
    "pickle": lambda: pickle.dumps({"graph": [1, 2, 3]}),
    "twice": lambda: MODEL_BYTES + MODEL_BYTES,  # protobuf merges: every node and initializer appears twice
    "trailing-garbage": lambda: MODEL_BYTES + b"\xff\xfe garbage",
}


@pytest.mark.parametrize("kind", sorted(NOT_ONNX))
def test_files_that_are_not_onnx_models(tmp_path: Path, capfd: pytest.CaptureFixture[str], kind: str) -> None:
    code, problem = _optimize_model_bytes(capfd, tmp_path / "v", NOT_ONNX[kind]())
    assert problem is None, problem
    assert code == 3 or kind == "trailing-garbage"


def test_model_path_is_a_folder(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.onnx").mkdir()
    argv = ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx")]
    assert _problem(capfd, tmp_path, argv, {3}, []) == (3, None)


@pytest.mark.parametrize("elem_type", [0, 33, 99])
def test_unknown_input_element_type(tmp_path: Path, capfd: pytest.CaptureFixture[str], elem_type: int) -> None:
    """Regression: an input whose element type onnx does not know raised KeyError from ``input_specs`` (exit 1);
    now exit 3. ``inspect`` shows it instead of crashing."""
    model = onnx.load(DIGITS)
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    onnx.save(model, tmp_path / "m.onnx")
    for data in ("random", str(EXAMPLES / "digits.npz")):
        argv = ["optimize", str(tmp_path / "m.onnx"), "--data", data, "-o", str(tmp_path / "out.onnx")]
        assert _problem(capfd, tmp_path, argv, {3}, []) == (3, None)
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    assert f"unknown element type {elem_type}" in capfd.readouterr().out


def test_onnxruntime_refusal_prints_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Regression: onnxruntime logged its own error lines on the stderr descriptor before graphopt's one line."""
    model = onnx.load(DIGITS)
    model.graph.initializer[1].dims[:] = [1]  # raw data of 16 floats for a [1] tensor: onnxruntime refuses it
    onnx.save(model, tmp_path / "m.onnx")
    argv = ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx")]
    code, err = _run(capfd, argv)
    assert code == 3 and len(err) == 1 and err[0].startswith(PREFIX + "onnxruntime cannot load"), err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


# --- data -----------------------------------------------------------------------------------------------------------


def _optimize_with_data(
    capfd: pytest.CaptureFixture[str], folder: Path, write: Callable[[Path], None], name: str = "d.npz"
) -> tuple[int, str | None]:
    folder.mkdir()
    write(folder / name)
    argv = ["optimize", str(DIGITS), "--data", str(folder / name), "-o", str(folder / "out.onnx")]
    return _problem(capfd, folder, argv, {5}, ["out.onnx", "out.report.json"])


def _savez(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _with(index: tuple[int, ...], value: float) -> np.ndarray:
    images = IMAGES[:40].copy()
    images[index] = value
    return images


class _Trap:
    """Unpickling this creates ``path``: proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.path),)


def _pickled_npz(path: Path) -> None:
    np.savez(path, image=np.array([_Trap(path.parent / "UNPICKLED")] * 4, dtype=object))


def _pickle_named_npz(path: Path) -> None:
    path.write_bytes(pickle.dumps({"image": _Trap(path.parent / "UNPICKLED")}))


def _member_header(header: str) -> Callable[[Path], None]:
    """An .npz whose member has a hand-written .npy (1.0) header."""
    def write(path: Path) -> None:
        padded = header.ljust(118) + "\n"
        npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded.encode() + IMAGES[:4].tobytes()
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("image.npy", npy)
    return write


def _corrupt_deflate(path: Path) -> None:
    """A compressed .npz whose deflate stream starts with a reserved block type: zlib.error while reading."""
    raw = bytearray(_npz_bytes(True, image=IMAGES[:40]))
    name_len, extra_len = struct.unpack("<HH", raw[26:30])
    start = 30 + name_len + extra_len
    raw[start:start + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))


def _unknown_compression(path: Path) -> None:
    """A zip member whose compression method is not one zipfile knows: NotImplementedError while reading."""
    raw = bytearray(_npz_bytes(image=IMAGES[:40]))
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 10:central + 12] = struct.pack("<H", 77)
    raw[8:10] = struct.pack("<H", 77)
    path.write_bytes(bytes(raw))


def _zip_with(member: str, content: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member, content)
    return write


BAD_DATA: dict[str, tuple[Callable[[Path], None], str]] = {
    "float64": (_savez(image=IMAGES.astype(np.float64)), "data is float64"),
    "float16": (_savez(image=IMAGES.astype(np.float16)), "data is float16"),
    "int64": (_savez(image=(IMAGES * 16).astype(np.int64)), "data is int64"),
    "int32": (_savez(image=(IMAGES * 16).astype(np.int32)), "data is int32"),
    "bool": (_savez(image=IMAGES > 0), "data is bool"),
    "complex": (_savez(image=IMAGES.astype(np.complex64)), "data is complex64"),
    "strings": (_savez(image=np.array(["a"] * 4)), "data is <U1"),
    "structured": (_savez(image=np.zeros((4, 1, 8, 8), [("a", "f4")])), "model expects float32"),
    "rank-minus-one": (_savez(image=IMAGES[:, 0]), "data has shape [797, 8, 8]"),
    "rank-plus-two": (_savez(image=IMAGES[None, None]), "data has shape"),
    "scalar": (_savez(image=np.float32(1.0)), "data has shape []"),
    "one-unbatched-sample": (_savez(image=IMAGES[0]), "data has shape [1, 8, 8]"),
    "wrong-channels": (_savez(image=np.concatenate([IMAGES, IMAGES], 1)), "dimension 1 is 2"),
    "wrong-height": (_savez(image=IMAGES[:, :, :7]), "dimension 2 is 7"),
    "wrong-width": (_savez(image=IMAGES[..., :5]), "dimension 3 is 5"),
    "stacked-wrong-dims": (_savez(image=IMAGES[:8, None, :, :, :4]), "dimension 3 is 4"),
    "extra-array": (_savez(image=IMAGES, mask=IMAGES), "not model inputs: mask"),
    "missing-array": (_savez(pixels=IMAGES), "no array for model input 'image'"),
    "no-arrays": (_savez(), "no array for model input 'image'"),
    "nan": (_savez(image=_with((3, 0, 2, 2), np.nan)), "NaN or Inf"),
    "inf": (_savez(image=_with((0, 0, 0, 0), np.inf)), "NaN or Inf"),
    "minus-inf": (_savez(image=_with((39, 0, 7, 7), -np.inf)), "NaN or Inf"),
    "all-nan": (_savez(image=np.full((4, 1, 8, 8), np.nan, np.float32)), "NaN or Inf"),
    "zero-samples": (_savez(image=IMAGES[:0]), "zero samples"),
    "pickled-object-array": (_pickled_npz, "Object arrays cannot be loaded"),
    "pickle-named-npz": (_pickle_named_npz, "pickled"),
    "empty-file": (lambda p: p.write_bytes(b""), "cannot read data file"),
    "text-file": (lambda p: p.write_text("image = [1, 2, 3]\n"), "cannot read data file"),
    "zip-of-text": (_zip_with("image.npy", b"not an array"), "member 'image' is not a numpy array"),
    "zip-folder-member": (_zip_with("image.npy/", b""), "is not a numpy array"),
    "npy-named-npz": (lambda p: p.write_bytes(_npy_bytes(IMAGES)), "is not an .npz archive"),
    "unclosed-header": (_member_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 8, 8"), "cannot read"),
    "header-not-a-dict": (_member_header("[1, 2, 3]"), "cannot read"),
    "header-huge-shape": (_member_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4000, 1, 8, 8), }"),
                          "cannot read"),
    "corrupt-deflate": (_corrupt_deflate, "cannot read data file"),
    "unknown-compression": (_unknown_compression, "cannot read data file"),
}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_data_files(tmp_path: Path, capfd: pytest.CaptureFixture[str], kind: str) -> None:
    """Regressions among these: a .npy named .npz (TypeError), a zip member that is not an array (AttributeError),
    an unparsable .npy header (tokenize.TokenError), a corrupt deflate stream (zlib.error) and an unknown zip
    compression method (NotImplementedError) all ended in tracebacks; now exit 5."""
    write, message = BAD_DATA[kind]
    folder = tmp_path / "v"
    folder.mkdir()
    write(folder / "d.npz")
    code, err = _run(capfd, ["optimize", str(DIGITS), "--data", str(folder / "d.npz"), "-o", str(folder / "out.onnx")])
    assert code == 5 and len(err) == 1 and err[0].startswith(PREFIX) and message in err[0], err
    assert sorted(os.listdir(folder)) == ["d.npz"]
    assert not (tmp_path / "v" / "UNPICKLED").exists(), "a data file was unpickled"


def test_npz_named_npy_and_npy_folders(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Regression: an .npz archive behind an .npy name (a file, a folder member or the labels) was taken for an array
    and failed with AttributeError; now exit 5."""
    archive = _npz_bytes(image=IMAGES[:8])
    assert _optimize_with_data(capfd, tmp_path / "file", lambda p: p.write_bytes(archive), "image.npy") == (5, None)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data").mkdir()
    (folder / "data" / "image.npy").write_bytes(archive)
    argv = ["optimize", str(DIGITS), "--data", str(folder / "data"), "-o", str(folder / "out.onnx")]
    assert _problem(capfd, folder, argv, {5}, []) == (5, None)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "l.npy").write_bytes(_npz_bytes(y=LABELS))
    argv = ["validate", str(DIGITS), str(DIGITS), "--data", str(EXAMPLES / "digits.npz"), "--labels",
            str(labels / "l.npy"), "--report", str(labels / "r.json"), *QUICK_VALIDATE]
    assert _problem(capfd, labels, argv, {5}, []) == (5, None)


def test_fuzzed_npz_bytes(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Truncations and seeded bit flips of stored and compressed archives, biased to the zip and .npy headers."""
    rng = np.random.default_rng(5)
    problems, outcomes = [], {0: 0, 5: 0}
    variants: list[tuple[str, bytes]] = []
    for compressed in (False, True):
        raw = _npz_bytes(compressed, image=IMAGES[:40])
        for cut in (1, 4, 30, 100, len(raw) // 2, len(raw) - 22, len(raw) - 1):
            variants.append((f"{'compressed' if compressed else 'stored'} cut at {cut}", raw[:cut]))
        headers = [*range(200), *range(len(raw) - 120, len(raw))]
        for i in range(130):
            position = int(rng.choice(headers)) if i % 3 else int(rng.integers(len(raw)))
            flipped = bytearray(raw)
            flipped[position] ^= 1 << int(rng.integers(8))
            variants.append((f"{'compressed' if compressed else 'stored'} flip at {position}", bytes(flipped)))
    for i, (label, content) in enumerate(variants):
        code, problem = _optimize_with_data(capfd, tmp_path / f"v{i}", lambda p, c=content: p.write_bytes(c))
        outcomes[code] = outcomes.get(code, 0) + 1
        if problem:
            problems.append(f"{label}: {problem}")
    assert not problems, "\n".join(problems)
    assert outcomes[5] >= 150 and outcomes[0] >= 5, outcomes


LABEL_CASES: dict[str, tuple[np.ndarray | str, str]] = {
    "short": (LABELS[:-1], "labels hold 796 values for 797 samples"),
    "long": (np.concatenate([LABELS, LABELS[:3]]), "labels hold 800 values"),
    "nan": (np.where(LABELS == 3, np.nan, LABELS), "must be finite numbers"),
    "inf": (np.where(LABELS == 3, np.inf, LABELS), "must be finite numbers"),
    "strings": (LABELS.astype(str), "must be finite numbers"),
    "scalar": (np.int64(3), "must be finite numbers"),
    "object": (LABELS.astype(object), "cannot read labels|Object arrays"),
    "two-columns": (np.stack([LABELS, LABELS], 1), "labels do not fit output 'logits'"),
    "out-of-range": (LABELS + 10, "labels do not fit output 'logits'"),
    "negative": (LABELS - 1, "labels do not fit output 'logits'"),
    "fractional": (LABELS + 0.5, "labels do not fit output 'logits'"),
    "not-in-data": ("no_such_array", "neither an array of the data"),
    "missing-npy": ("missing.npy", "neither an array of the data"),
}


@pytest.mark.parametrize("kind", list(LABEL_CASES))
def test_labels_that_do_not_fit(tmp_path: Path, capfd: pytest.CaptureFixture[str], kind: str) -> None:
    """``validate --labels``: a label array in the data file or an .npy beside it. Regressions: two-column labels
    raised ValueError (exit 1); labels outside 0..classes-1 or fractional passed silently with accuracy 0."""
    labels, message = LABEL_CASES[kind]
    if isinstance(labels, str):
        reference = labels
    elif labels.dtype == object:
        np.save(tmp_path / "labels.npy", labels, allow_pickle=True)
        reference = str(tmp_path / "labels.npy")
    else:
        np.save(tmp_path / "labels.npy", labels)
        reference = str(tmp_path / "labels.npy")
    argv = ["validate", str(DIGITS), str(DIGITS), "--data", str(EXAMPLES / "digits.npz"), "--labels", reference,
            "--report", str(tmp_path / "r.json"), *QUICK_VALIDATE]
    code, err = _run(capfd, argv)
    assert code == 5 and len(err) == 1 and err[0].startswith(PREFIX), err
    assert any(part in err[0] for part in message.split("|")), err
    assert not (tmp_path / "r.json").exists()


def test_labels_inside_the_data_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "d.npz", image=IMAGES, y=LABELS + 10)
    argv = ["validate", str(DIGITS), str(DIGITS), "--data", str(tmp_path / "d.npz"), "--labels", "y",
            "--report", str(tmp_path / "r.json"), *QUICK_VALIDATE]
    code, err = _run(capfd, argv)
    assert code == 5 and len(err) == 1 and "values 10..19" in err[0], err
    np.savez(tmp_path / "d.npz", image=IMAGES, y=LABELS.astype(np.float32))  # whole-number floats are class indices
    code, err = _run(capfd, argv)
    assert code == 0 and (tmp_path / "r.json").exists(), err
