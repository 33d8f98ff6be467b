from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import graphopt
from graphopt.columns import Rows
from graphopt.data import Dataset, InputSpec, input_specs, load_data, split_indices, synthesize
from graphopt.errors import DataError, UnsupportedModelError

SPECS = (InputSpec("x", np.dtype(np.float32), ("N", 8)),)


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_input_specs_skip_initializers(mlp_model) -> None:
    (spec,) = input_specs(mlp_model)
    assert spec.name == "x" and spec.dtype == np.float32 and spec.shape == ("N", 8) and spec.batch_axis


def test_npz_loads_and_batches(tmp_path: Path, rng: np.random.Generator) -> None:
    data = load_data(save(tmp_path / "d.npz", x=rng.standard_normal((10, 8)).astype(np.float32)), SPECS)
    assert data.n_samples == 10 and data.batchable and not data.synthetic
    assert [count for _, count in data.batches(4)] == [4, 4, 2]
    assert next(feed["x"].shape for feed, _ in data.batches(4, per_sample=True)) == (1, 8)


def test_folder_of_npz_and_npy(tmp_path: Path, rng: np.random.Generator) -> None:
    (tmp_path / "a").mkdir()
    save(tmp_path / "a" / "1.npz", x=rng.standard_normal((3, 8)).astype(np.float32))
    save(tmp_path / "a" / "2.npz", x=rng.standard_normal((4, 8)).astype(np.float32))
    assert load_data(tmp_path / "a", SPECS).n_samples == 7
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "x.npy", rng.standard_normal((5, 8)).astype(np.float32))
    assert load_data(tmp_path / "b", SPECS).n_samples == 5


def test_stacked_inputs_run_one_sample_at_a_time(tmp_path: Path, rng: np.random.Generator) -> None:
    specs = (InputSpec("state", np.dtype(np.float32), (2, 1, 4)), InputSpec("sr", np.dtype(np.int64), ()))
    path = save(tmp_path / "s.npz", state=np.zeros((3, 2, 1, 4), np.float32), sr=np.full(3, 16000))
    data = load_data(path, specs)
    assert data.stacked == {"state", "sr"} and not data.batchable
    feed, count = next(data.batches(8))
    assert count == 1 and feed["state"].shape == (2, 1, 4) and feed["sr"].shape == ()
    assert isinstance(feed["sr"], np.ndarray), "onnxruntime refuses numpy scalars for rank-0 inputs"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({}, "no array for model input 'x'"),
        ({"x": np.zeros((4, 8), np.float32), "y": np.zeros(4)}, "not model inputs: y"),
        ({"x": np.zeros((4, 8), np.float64)}, "input 'x': data is float64"),
        ({"x": np.zeros((4, 2, 2, 8), np.float32)}, "input 'x': data has shape"),
        ({"x": np.zeros((4, 7), np.float32)}, "dimension 1 is 7"),
        ({"x": np.zeros((0, 8), np.float32)}, "zero samples"),
        ({"x": np.full((2, 8), np.nan, np.float32)}, "NaN or Inf"),
    ],
)
def test_bad_data_is_one_line_error(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_data(save(tmp_path / "bad.npz", **arrays), SPECS)
    assert "\n" not in str(info.value)


def test_unreadable_and_pickled_data(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="cannot read"):
        load_data(tmp_path / "junk.npz", SPECS)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        load_data(tmp_path / "obj.npy", SPECS)
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "missing.npz", SPECS)


def test_random_data_resolves_dims_and_integer_ranges() -> None:
    specs = (
        InputSpec("input_ids", np.dtype(np.int64), ("batch", "seq")),
        InputSpec("attention_mask", np.dtype(np.int64), ("batch", "seq")),
        InputSpec("image", np.dtype(np.float32), (1, 3, 4, 4)),
    )
    data = synthesize(specs, n_samples=5)
    assert data.synthetic and data.n_samples == 5
    assert data.arrays["input_ids"].shape == (5, 16) and 0 <= data.arrays["input_ids"].min()
    assert data.arrays["input_ids"].max() < 100 and (data.arrays["attention_mask"] == 1).all()
    assert data.arrays["image"].shape == (5, 3, 4, 4)
    assert np.array_equal(synthesize(specs, 5).arrays["image"], data.arrays["image"])


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    x = np.arange(20 * 8, dtype=np.float32).reshape(20, 8)
    data = load_data(save(tmp_path / "d.npz", x=x), SPECS)
    calibration, verification = data.split(0.5)
    assert calibration.n_samples == 10 and verification.n_samples == 10
    seen = {tuple(r) for r in calibration.arrays["x"]} & {tuple(r) for r in verification.arrays["x"]}
    assert not seen
    again, _ = data.split(0.5)
    assert np.array_equal(again.arrays["x"], calibration.arrays["x"])


def _cast_model(source: int, target: int) -> onnx.ModelProto:
    node = helper.make_node("Cast", ["x"], ["y"], to=target)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", source, [2])],
                              [helper.make_tensor_value_info("y", target, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("elem_type", [onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN,
                                       onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.INT4])
def test_inputs_onnxruntime_cannot_feed_are_refused_up_front(elem_type: int, tmp_path: Path) -> None:
    """bfloat16, float8 and int4 exist in numpy only as ml_dtypes types, which onnxruntime's Python API rejects."""
    model = _cast_model(elem_type, onnx.TensorProto.FLOAT)
    name = helper.tensor_dtype_to_np_dtype(elem_type).name
    with pytest.raises(UnsupportedModelError, match=f"model input 'x' is {name}, which onnxruntime's Python API"):
        input_specs(model)
    out = tmp_path / "out.onnx"
    with pytest.raises(UnsupportedModelError):
        graphopt.optimize(model, "random", output=out, passes=[])
    assert not out.exists()


def test_outputs_onnxruntime_cannot_return_fail_in_one_line(tmp_path: Path) -> None:
    """bfloat16 outputs are refused by onnxruntime itself, in graphopt's words; float8e4m3fn comes back as its raw
    bytes, compared exactly."""
    out = tmp_path / "out.onnx"
    with pytest.raises(UnsupportedModelError, match="^an output is bfloat16, which onnxruntime's Python API cannot "
                       "return; graphopt compares numpy-typed outputs only$"):
        graphopt.optimize(_cast_model(onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16), "random", output=out)
    assert not out.exists()
    result = graphopt.optimize(_cast_model(onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT8E4M3FN), "random",
                               output=out)
    assert out.exists() and result.report.passes


def test_files_stay_on_disk_and_read_what_numpy_reads(tmp_path: Path, rng: np.random.Generator) -> None:
    """An .npy, or an .npz member stored uncompressed (``np.savez``), is read a batch at a time from its file;
    a compressed member is inflated. Subsets and batches read the same samples as numpy indexing."""
    x = rng.standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    for name in ("d.npz", "x.npy", "packed.npz"):
        path = tmp_path / name if name != "d.npz" else save(tmp_path / name, x=x)
        data = load_data(path, SPECS)
        assert isinstance(data.arrays["x"], Rows) == (name != "packed.npz"), name
        calibration, verification = data.split(0.5)
        _, rows = split_indices(40)
        np.testing.assert_array_equal(np.concatenate([f["x"] for f, _ in verification.batches(7)]), x[rows])
        np.testing.assert_array_equal(calibration.window(3, 9).to_arrays()["x"], x[np.setdiff1d(np.arange(40), rows)][3:9])
        np.testing.assert_array_equal(data.subset(np.array([5, 2, 3, 39])).arrays["x"][1:], x[[2, 3, 39]])


def test_a_split_copies_no_sample(rng: np.random.Generator) -> None:
    """Calibration and verification are row numbers into the caller's arrays, not copies of them."""
    x = rng.standard_normal((10, 8)).astype(np.float32)
    calibration, verification = Dataset({"x": x}, frozenset(), True).split(0.5)
    for part in (calibration, verification, verification.window(1, 3)):
        column = part.arrays["x"]
        assert isinstance(column, Rows) and column.source is x


def test_reading_a_large_file_holds_one_batch(tmp_path: Path) -> None:
    """Loading, checking (every value is finite), splitting and batching 64 MiB of samples allocates a few chunks of
    4 MiB at most: the memory of a run does not grow with the number of samples (the whole file was read in before,
    and the split copied it again)."""
    x = np.ones((2**14, 1024), np.float32)
    data_file = save(tmp_path / "big.npz", x=x)
    specs = (InputSpec("x", np.dtype(np.float32), ("N", 1024)),)
    del x
    tracemalloc.start()
    try:
        calibration, verification = load_data(data_file, specs).split(0.5)
        total = sum(float(feed["x"].sum()) for part in (calibration, verification) for feed, _ in part.batches(64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 2**24
    assert peak < 2**24, f"{peak / 2**20:.1f} MiB allocated to read 64 MiB of samples"


def test_a_file_that_changes_or_lies_about_its_length_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = save(tmp_path / "d.npz", x=rng.standard_normal((10, 8)).astype(np.float32))
    data = load_data(path, SPECS)
    path.write_bytes(path.read_bytes())  # same bytes, written again: another file now
    os.utime(path, ns=(0, 0))
    with pytest.raises(DataError, match="changed while graphopt was reading it"):
        next(data.batches(4))
    np.save(tmp_path / "x.npy", rng.standard_normal((10, 8)).astype(np.float32))
    whole = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(whole[:-8])
    with pytest.raises(DataError, match="truncated or forged"):
        load_data(tmp_path / "x.npy", SPECS)


def test_an_encrypted_member_is_a_data_error(tmp_path: Path) -> None:
    """zipfile raises RuntimeError for a member flagged as encrypted; it escaped as a traceback."""
    raw = bytearray(save(tmp_path / "d.npz", x=np.zeros((4, 8), np.float32)).read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory entry
        raw[raw.find(signature) + flags] |= 1
    (tmp_path / "d.npz").write_bytes(raw)
    with pytest.raises(DataError, match="encrypted"):
        load_data(tmp_path / "d.npz", SPECS)
