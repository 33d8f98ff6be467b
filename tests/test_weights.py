"""Weights kept in their files (``graphopt.weights``): a model read with external data holds its large weights as
references, and every consumer (copies, graph surgery, onnxruntime, the checker, saving) works on them without
reading them into the model; the values a pass sees are the file's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import goal, perf, runtime, weights
from graphopt._proto import model_size, save_model_file, serialised_size
from graphopt.errors import ModelIOError
from graphopt.graph import copy_model, editing, import_graph
from graphopt.modelio import check_model, read_model, save_model
from graphopt.runtime import create_session


def _mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N, 256] → MatMul w1 [256, 128] (128 KiB) → Relu → MatMul w2 [128, 8] (4 KiB: too small to stay in place)."""
    w1 = numpy_helper.from_array(rng.standard_normal((256, 128)).astype(np.float32) / 16, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 8)).astype(np.float32) / 11, "w2")
    shape = numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")  # read by shape inference: stays inline
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w1, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def saved(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, onnx.ModelProto]:
    """The MLP saved with every initializer external (as exporters write big models), and the model in memory."""
    model = _mlp(rng)
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    return folder / "m.onnx", _mlp(np.random.default_rng(0))


def _feed(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((4, 256)).astype(np.float32)}


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(create_session(model).run(None, feed)[0])


def test_large_weights_stay_in_their_file(saved: tuple[Path, onnx.ModelProto]) -> None:
    path, model = saved
    loaded = read_model(path)
    placed = [t.name for t in weights.in_place_tensors(loaded.model)]
    assert placed == ["w1"]  # w2 (4 KiB) and the shape are read into the model
    assert loaded.files == (path, path.parent / "m.onnx.data")
    w1 = next(t for t in loaded.model.graph.initializer if t.name == "w1")
    assert Path(next(e.value for e in w1.external_data if e.key == "location")) == (path.parent / "m.onnx.data")
    assert serialised_size(loaded.model) < 8192 < model_size(loaded.model)  # a copy costs a few bytes per weight
    assert abs(model_size(loaded.model) - model.ByteSize()) < 512
    values = weights.to_array(w1)
    np.testing.assert_array_equal(values, numpy_helper.to_array(model.graph.initializer[0]))
    assert weights.to_array(w1) is values  # mapped once while it lives
    with pytest.raises(ValueError, match="read-only"):
        values[0, 0] = 1.0  # the user's file is never written through a map


def test_onnxruntime_and_the_checker_read_weights_in_place(saved: tuple[Path, onnx.ModelProto],
                                                           rng: np.random.Generator) -> None:
    path, model = saved
    loaded = read_model(path).model
    feed = _feed(rng)
    expected = _run(model, feed)
    np.testing.assert_allclose(_run(loaded, feed), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(check_model(copy_model(loaded)).run(None, feed)[0], expected, rtol=1e-5, atol=1e-6)
    broken = copy_model(loaded)
    broken.graph.node[0].input[1] = "missing"
    with pytest.raises(Exception, match="missing"):  # the checker still checks a model whose weights are in place
        check_model(broken)


def test_saving_streams_weights_in_place_into_the_output(saved: tuple[Path, onnx.ModelProto], tmp_path: Path,
                                                         rng: np.random.Generator) -> None:
    path, model = saved
    loaded = read_model(path).model
    before = path.parent.joinpath("m.onnx.data").read_bytes()
    out = save_model(loaded, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]
    stored = onnx.load_model(out, load_external_data=False)
    locations = {e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}  # relative, beside the output: never the input's absolute path
    feed = _feed(rng)
    np.testing.assert_array_equal(_run(out, feed), _run(model, feed))
    assert path.parent.joinpath("m.onnx.data").read_bytes() == before
    assert weights.in_place(loaded)  # saving left the caller's model as it was
    holes = tmp_path / "holes"
    holes.mkdir()
    assert save_model_file(loaded, holes / "h.onnx", holes=True) == ["h.onnx.data"]
    onnx.checker.check_model(str(holes / "h.onnx"), full_check=True)
    assert (holes / "h.onnx.data").stat().st_blocks * 512 < 128 * 1024  # a hole of 128 KiB takes no blocks


def test_graph_surgery_keeps_unchanged_weights_in_place(saved: tuple[Path, onnx.ModelProto],
                                                        rng: np.random.Generator) -> None:
    path, model = saved
    loaded = read_model(path).model
    w1 = weights.to_array(next(t for t in loaded.graph.initializer if t.name == "w1"))
    with editing(loaded) as edit:
        first = edit.graph.nodes[0].inputs[1]
        np.testing.assert_array_equal(first.values, w1)  # read through the map: kept in place on export
        edit.graph.nodes[2].inputs[1].values = edit.graph.nodes[2].inputs[1].values * 2  # an inline weight changed
    assert [t.name for t in weights.in_place_tensors(edit.model)] == ["w1"]
    feed = _feed(rng)
    np.testing.assert_allclose(_run(edit.model, feed), 2 * _run(model, feed), rtol=1e-5, atol=1e-6)
    with editing(loaded) as edit:
        first = edit.graph.nodes[0].inputs[1]
        first.values = first.values[:, ::-1] * 1  # a pass's new values for a weight in place: written inline
    assert not weights.in_place(edit.model)
    changed = next(t for t in edit.model.graph.initializer if t.name == "w1")
    assert changed.data_location == TensorProto.DEFAULT and not changed.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(changed), w1[:, ::-1])
    onnx.checker.check_model(edit.model, full_check=True)
    graph = import_graph(loaded)
    assert graph.nodes[0].inputs[1].values.dtype == np.float32


def test_a_view_or_a_copy_of_a_map_is_not_taken_for_the_weight(saved: tuple[Path, onnx.ModelProto]) -> None:
    path, _ = saved
    loaded = read_model(path).model
    with editing(loaded) as edit:
        first = edit.graph.nodes[0].inputs[1]
        first.values = first.values[:128]  # a view of the map: another tensor
        edit.graph.nodes[0].inputs[0].shape = ["N", 128]
    assert not weights.in_place(edit.model)
    assert next(t for t in edit.model.graph.initializer if t.name == "w1").dims == [128, 128]


def test_an_absolute_location_in_a_file_is_still_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """Only ``read_model`` makes locations absolute; a model file that names one is refused as before."""
    model = _mlp(rng)
    data = tmp_path / "w.bin"
    numpy_helper.to_array(model.graph.initializer[0]).tofile(data)
    weights.place(model.graph.initializer[0], data, 0, data.stat().st_size)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelIOError, match="outside"):
        read_model(tmp_path / "m.onnx")


def test_sessions_on_weights_in_place_do_not_copy_them(saved: tuple[Path, onnx.ModelProto]) -> None:
    """onnxruntime loads a model with weights in place from a shell beside them (it maps them from the file), not
    from maps handed over in memory (which it copies); those maps are what the fallback would hand over."""
    path, _ = saved
    loaded = read_model(path).model
    names, maps = weights.external_initializers(loaded)
    assert names == ["w1"] and isinstance(maps[0], np.memmap)
    session = create_session(loaded)
    assert isinstance(session, ort.InferenceSession)
    assert not hasattr(session, "_graphopt_weights")  # only the in-memory fallback keeps the maps alive



def test_sessions_load_beside_the_weights_and_leave_nothing_there(saved: tuple[Path, onnx.ModelProto],
                                                                  rng: np.random.Generator,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime maps external data only from a file in the model's folder: the session is loaded from a shell
    written beside the weights and removed at once; where that folder cannot be written, the weights are handed
    over in memory instead, with the same outputs."""
    path, model = saved
    loaded = read_model(path).model
    listing = sorted(p.name for p in path.parent.iterdir())
    feed = _feed(rng)
    expected = _run(model, feed)
    np.testing.assert_allclose(_run(loaded, feed), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == listing

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError("read-only folder")

    monkeypatch.setattr(runtime.tempfile, "mkstemp", refused)
    np.testing.assert_allclose(_run(loaded, feed), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def test_new_weights_a_pass_wrote_inline_are_mapped_from_a_data_file_beside_the_shell(
        saved: tuple[Path, onnx.ModelProto], rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate holds the weights a pass rewrote inline (a gigabyte of int8 for a large model): its session shell
    names them as external data in a file beside it, so onnxruntime maps them instead of parsing a copy; small
    tensors stay in the shell. Outputs are those of the same model held inline, and both files are gone after."""
    path, _ = saved
    candidate = read_model(path).model
    extra = (rng.standard_normal((256, 128)) / 16).astype(np.float32)
    candidate.graph.initializer.append(numpy_helper.from_array(extra, "w1b"))  # 128 KiB: inline, spilled
    first = candidate.graph.node[0]
    first.output[0] = "h1"
    candidate.graph.node.insert(1, helper.make_node("MatMul", ["x", "w1b"], ["h2"]))
    candidate.graph.node.insert(2, helper.make_node("Add", ["h1", "h2"], ["h"]))
    assert first.input[1] == "w1" and weights.in_place(candidate)
    inline = copy_model(candidate)
    for tensor in inline.graph.initializer:
        if weights.is_in_place(tensor):
            tensor.CopyFrom(numpy_helper.from_array(weights.to_array(tensor), tensor.name))
    listing = sorted(p.name for p in path.parent.iterdir())
    seen: dict[str, int] = {}
    real = runtime.ort.InferenceSession

    def recording(source: object, *args: object, **kwargs: object) -> ort.InferenceSession:
        seen.update({p.name: p.stat().st_size for p in path.parent.iterdir() if p.name not in listing})
        return real(source, *args, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    feed = _feed(rng)
    got = _run(candidate, feed)
    monkeypatch.setattr(runtime.ort, "InferenceSession", real)
    np.testing.assert_allclose(got, _run(inline, feed), rtol=1e-5, atol=1e-6)
    shells = [name for name in seen if name.endswith(".onnx")]
    assert len(shells) == 1 and set(seen) == {shells[0], shells[0] + ".data"}
    assert seen[shells[0] + ".data"] == extra.nbytes, "the new weight is in the data file, at offset 0"
    assert seen[shells[0]] < 8192, "the shell holds no weight"
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def test_an_absolute_location_a_proto_brings_along_is_not_read(tmp_path: Path, rng: np.random.Generator) -> None:
    """A model loaded by a caller without its external data, naming a file anywhere by an absolute path, is not
    taken for one with weights in place: graphopt neither maps nor copies that file."""
    model = _mlp(rng)
    secret = tmp_path / "elsewhere.bin"
    numpy_helper.to_array(model.graph.initializer[0]).tofile(secret)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", str(secret)), ("offset", "0"), ("length", str(secret.stat().st_size))):
        tensor.external_data.add(key=key, value=value)
    assert not weights.is_in_place(tensor) and not weights.in_place(model)
    with pytest.raises(Exception, match="absolute"):
        weights.to_array(tensor)


def test_sizes_and_timing_count_weights_in_place(saved: tuple[Path, onnx.ModelProto],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose weights stay in their file is as big as its weights wherever size decides something: ``--goal
    size`` compares it with a model holding them inline as equals, and the speed gate's two-sessions-per-model rule
    (``perf.BALANCED_BYTES``) does not load a big model four times because its proto is small."""
    path, inline = saved
    placed = read_model(path).model
    assert serialised_size(placed) < 0.1 * model_size(placed)
    verdict, _ = goal.choose("size", placed, [(goal.GoalCandidate("inline", "verified"), inline)], {})
    assert verdict.candidates[0].size_ratio == pytest.approx(1.0, abs=0.01)
    monkeypatch.setattr(perf, "BALANCED_BYTES", 2 * model_size(placed) - 1)
    assert perf.creation_order([placed, placed]) == [0, 1], "two sessions each only while the weights fit the bound"
    monkeypatch.setattr(perf, "BALANCED_BYTES", 2 * model_size(placed) + 1)
    assert perf.creation_order([placed, placed]) == [0, 1, 1, 0]


def test_shells_left_by_a_killed_run_are_removed_by_the_next(saved: tuple[Path, onnx.ModelProto],
                                                             rng: np.random.Generator) -> None:
    """A run killed while onnxruntime loaded leaves its shell and data file beside the user's weights (hundreds of MB
    when a candidate holds new tensors inline); the next session on this machine removes those of ended processes, and
    leaves a live process's and another host's alone."""
    import subprocess
    import sys

    path, model = saved
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = path.parent / f"{runtime._SHELL_PREFIX}{runtime._HOST}-{ended.pid}-abc.onnx"
    live = path.parent / f"{runtime._SHELL_PREFIX}{runtime._HOST}-{os.getppid()}-abc.onnx"
    other = path.parent / f"{runtime._SHELL_PREFIX}elsewhere-{ended.pid}-abc.onnx"
    stale_data = stale.with_name(stale.name + ".data")
    for shell in (stale, stale_data, live, other):
        shell.write_bytes(b"left over")
    feed = _feed(rng)
    np.testing.assert_allclose(_run(read_model(path).model, feed), _run(model, feed), rtol=1e-5, atol=1e-6)
    assert not stale.exists() and not stale_data.exists() and live.exists() and other.exists()
