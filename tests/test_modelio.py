from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphopt import modelio
from graphopt.errors import ModelIOError, OutputPathError, UnsupportedModelError
from graphopt.modelio import load_model, max_supported_opset, model_files, read_model, save_model


def test_round_trip(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    path = save_model(mlp_model, tmp_path / "m.onnx")
    assert load_model(path).graph == mlp_model.graph
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an ONNX model"),
        (b"\x08\x07\x12", "not a readable ONNX model|not an ONNX model"),
        (np.random.default_rng(0).bytes(4096), "not a readable ONNX model|not an ONNX model"),
        (numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString(), "not a readable|not an ONNX"),
    ],
    ids=["empty", "truncated-header", "random-bytes", "tensor-proto"],
)
def test_unreadable_models(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.onnx").write_bytes(content)
    with pytest.raises(ModelIOError, match=message) as info:
        load_model(tmp_path / "bad.onnx")
    assert "\n" not in str(info.value)


def test_truncated_model(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    data = mlp_model.SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelIOError):
        load_model(tmp_path / "cut.onnx")


@pytest.mark.parametrize("opset", [5, 99])
def test_unsupported_opset(tmp_path: Path, mlp_model: onnx.ModelProto, opset: int) -> None:
    mlp_model.opset_import[0].version = opset
    onnx.save(mlp_model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match=f"opset {opset}"):
        load_model(tmp_path / "m.onnx")
    assert 17 <= max_supported_opset() <= onnx.defs.onnx_opset_version()


def _external(tmp_path: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    model = load_model(_external(tmp_path, "w.bin"))
    assert numpy_helper.to_array(model.graph.initializer[0]).sum() == 16


def test_model_files_names_what_read_model_reads_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    path = _external(tmp_path, "w.bin")
    assert model_files(path) == read_model(path).files == (path, (tmp_path / "w.bin").resolve())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_escaping_folder_is_refused(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ModelIOError, match="outside"):
        load_model(_external(folder, location))
    with pytest.raises(ModelIOError, match="outside"):
        model_files(folder / "ext.onnx")


def test_external_data_missing_or_short(tmp_path: Path) -> None:
    with pytest.raises(ModelIOError, match="missing"):
        load_model(_external(tmp_path, "w.bin"))
    (tmp_path / "w.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelIOError, match="shorter"):
        load_model(_external(tmp_path, "w.bin"))


def test_save_refuses_input_path_and_bad_folders(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    source = save_model(mlp_model, tmp_path / "in.onnx")
    before = source.read_bytes()
    with pytest.raises(OutputPathError, match="same file as"):
        save_model(mlp_model, tmp_path / "." / "in.onnx", protect=(source,))
    assert source.read_bytes() == before
    with pytest.raises(OutputPathError, match="does not exist"):
        save_model(mlp_model, tmp_path / "missing" / "out.onnx")
    with pytest.raises(OutputPathError, match="does not exist"):
        save_model(mlp_model, source / "out.onnx")
    with pytest.raises(OutputPathError, match="is a folder"):
        save_model(mlp_model, tmp_path)


def test_invalid_model_is_never_written(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    mlp_model.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(ModelIOError, match="onnx.checker"):
        save_model(mlp_model, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_large_models_are_saved_with_external_data(
    tmp_path: Path, mlp_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
    path = save_model(mlp_model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert load_model(path).graph.initializer[0].raw_data
