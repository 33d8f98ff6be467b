from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import parser

from graphopt.columns import Joined, Rows, SpillFile
from graphopt.data import Dataset
from graphopt.errors import UnsupportedModelError
from graphopt.outputs import join_samples, take_samples
from graphopt.runtime import RaggedOutput, RuntimeConfig, create_session, run_dataset, stack_samples

SPLIT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x, int64[2] parts) => (seq(float[?]) y) { y = SplitToSequence(x, parts) }"""


def test_sequence_of_unequal_tensors_is_refused_in_one_line() -> None:
    """onnx's ``test_split_to_sequence_2`` (parts of 2 and 1) crashed the reference run with numpy's "inhomogeneous
    shape" ValueError; sequences of equal tensors still stack into one array."""
    session = create_session(parser.parse_model(SPLIT))

    def data(length: int, parts: list[int]) -> Dataset:
        x = np.arange(length, dtype=np.float32)
        return Dataset({"x": np.stack([x, x]), "parts": np.array([parts, parts], np.int64)},
                       frozenset({"x", "parts"}), batchable=False)

    with pytest.raises(UnsupportedModelError, match=r"different shapes \(\[1\], \[2\]\)"):
        run_dataset(session, data(3, [2, 1]))
    outputs, per_sample = run_dataset(session, data(4, [2, 2]))
    assert per_sample and isinstance(outputs["y"], np.ndarray) and outputs["y"].shape == (2, 2, 2)


NONZERO = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 6] x) => (int64[2, ?] y) { y = NonZero(x) }"""

# Each batch keeps its columns up to the largest count of positives in any of its rows: the output's second axis
# depends on which samples share a batch.
BATCH_WIDTH = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, ?] y) {
  zero = Constant <value = float {0.0}> ()
  positive = Greater(x, zero)
  counts = Cast <to = 7> (positive)
  axis = Constant <value = int64[1] {1}> ()
  per_row = ReduceSum <keepdims = 0> (counts, axis)
  k = ReduceMax <keepdims = 1, axes = [0]> (per_row)
  start = Constant <value = int64[1] {0}> ()
  y = Slice(x, start, k, axis)
}"""


def test_outputs_whose_shape_varies_by_sample_come_back_ragged(rng: np.random.Generator) -> None:
    """NonZero crashed the reference run with np.concatenate's ValueError; its batched output does not follow the
    batch axis, so it runs per sample and keeps one array per sample (a stackable run still stacks)."""
    x = (rng.random((5, 6)) > 0.5).astype(np.float32)
    x[0] = [1, 0, 0, 0, 0, 0]
    x[1] = [1, 1, 0, 0, 0, 0]
    outputs, per_sample = run_dataset(create_session(parser.parse_model(NONZERO)), Dataset({"x": x}, frozenset(), True))
    y = outputs["y"]
    assert per_sample and isinstance(y, RaggedOutput) and len(y) == 5 and y.dtype == np.int64
    for sample, got in zip(x, y.samples, strict=True):
        np.testing.assert_array_equal(got, np.array(np.nonzero(sample[np.newaxis])))
    even = np.tile(x[:1], (3, 1))
    outputs, _ = run_dataset(create_session(parser.parse_model(NONZERO)), Dataset({"x": even}, frozenset(), True))
    assert isinstance(outputs["y"], np.ndarray) and outputs["y"].shape == (3, 2, 1)


def test_an_output_whose_shape_changes_between_batches_runs_per_sample(rng: np.random.Generator) -> None:
    """Its values may depend on which samples share a batch, so the reference runs one sample at a time; a model run
    in the batched layout (``per_sample=False``) is split into its samples' slices instead."""
    x = rng.standard_normal((6, 8)).astype(np.float32)
    config = RuntimeConfig(batch_size=2)
    session = create_session(parser.parse_model(BATCH_WIDTH), config)
    data = Dataset({"x": x}, frozenset(), True)
    outputs, per_sample = run_dataset(session, data, config)
    assert per_sample and isinstance(outputs["y"], RaggedOutput)
    assert outputs["y"].shapes == tuple((1, int((row > 0).sum())) for row in x)
    batched, per_sample = run_dataset(session, data, config, per_sample=False)
    y = batched["y"]
    assert not per_sample and isinstance(y, RaggedOutput)
    widths = [int((x[i:i + 2] > 0).sum(axis=1).max()) for i in (0, 2, 4)]
    assert y.shapes == tuple((w,) for w in widths for _ in range(2))
    np.testing.assert_array_equal(y.samples[3], x[3, :widths[1]])


def test_the_batched_layout_refuses_an_output_off_the_batch_axis_in_one_line() -> None:
    """A model asked for the batched layout (the reference's) whose output no longer follows the batch raised a
    private exception through the manager; it is now an UnsupportedModelError that rolls the candidate back."""
    session = create_session(parser.parse_model(NONZERO))
    data = Dataset({"x": np.ones((5, 6), np.float32)}, frozenset(), True)
    with pytest.raises(UnsupportedModelError, match=r"output 'y' does not follow the batch axis \(shape \[2, 30\] for "
                                                     r"a batch of 5\)"):
        run_dataset(session, data, per_sample=False)


def test_ragged_output_container() -> None:
    a, b = np.zeros((2, 1), np.int64), np.zeros((2, 3), np.int64)
    ragged = stack_samples([a, b, a])
    assert isinstance(ragged, RaggedOutput) and ragged.shapes == ((2, 1), (2, 3), (2, 1))
    taken = ragged.take(np.array([2, 1]))
    assert taken.shapes == ((2, 1), (2, 3)) and taken.samples[1] is b
    stacked = stack_samples([a, a])
    assert isinstance(stacked, np.ndarray) and stacked.shape == (2, 2, 1)
    with pytest.raises(ValueError, match="at least one sample"):
        RaggedOutput(())
    with pytest.raises(ValueError, match="one dtype"):
        RaggedOutput((a, b.astype(np.float32)))


ADD = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 1024] x) => (float[N, 1024] y) { one = Constant <value = float {1.0}> () y = Add(x, one) }"""

_PEAK_GROWTH = f"""
import sys
import numpy as np
from onnx import parser
from graphopt.data import Dataset
from graphopt.runtime import RuntimeConfig, create_session, run_dataset

def high_water() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

x = np.ones((65536, 1024), np.float32)
session = create_session(parser.parse_model({ADD!r}))
before = high_water()
spill_bytes = None if sys.argv[1] == "memory" else 1 << 22
outputs, _ = run_dataset(session, Dataset({{"x": x}}, frozenset(), True), RuntimeConfig(batch_size=64),
                         spill_bytes=spill_bytes)
y = np.asarray(outputs["y"][:100]) if spill_bytes else outputs["y"]
assert float(y.min()) == float(y.max()) == 2.0
print((high_water() - before) / x.nbytes)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_a_run_fills_one_array_instead_of_joining_its_batches() -> None:
    """A run's memory grows by its output's size, not twice it: the batches go into one array as they come, where
    they were kept in a list and then concatenated (256 MiB of output grew the peak by 2.0× its size)."""
    done = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, "memory"], capture_output=True, text=True, check=True)
    growth = float(done.stdout.split()[-1])
    assert growth < 1.5, f"the peak grew by {growth:.2f}× the output"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_a_run_asked_to_spill_keeps_a_large_output_on_disk() -> None:
    """With ``spill_bytes`` the 256 MiB output goes to a temporary file as it comes: the peak grows by a few
    batches, not by the output (the verifier holds the reference, the previous model's and a candidate's outputs
    this way)."""
    done = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, "disk"], capture_output=True, text=True, check=True)
    growth = float(done.stdout.split()[-1])
    assert growth < 0.1, f"the peak grew by {growth:.2f}× the output"


def test_an_output_on_disk_reads_back_as_the_run_gave_it(rng: np.random.Generator) -> None:
    """Only an output over ``spill_bytes`` goes to disk; its rows, a window of them and a join with more samples
    (a candidate screened on its first samples, then run on the rest) read back as the in-memory run's."""
    x = rng.standard_normal((20, 1024)).astype(np.float32)
    session = create_session(parser.parse_model(ADD))
    data = Dataset({"x": x}, frozenset(), True)
    in_memory, _ = run_dataset(session, data, RuntimeConfig(batch_size=8))
    on_disk, _ = run_dataset(session, data, RuntimeConfig(batch_size=8), spill_bytes=20 * 4096 - 1)
    kept, _ = run_dataset(session, data, RuntimeConfig(batch_size=8), spill_bytes=20 * 4096)
    assert isinstance(on_disk["y"], Rows) and isinstance(kept["y"], np.ndarray)
    assert isinstance(on_disk["y"].source, SpillFile) and "temporary file" in repr(on_disk["y"])
    np.testing.assert_array_equal(np.asarray(on_disk["y"]), in_memory["y"])
    np.testing.assert_array_equal(np.asarray(take_samples(on_disk["y"], slice(3, 7))), in_memory["y"][3:7])
    joined = join_samples([in_memory["y"][:5], take_samples(on_disk["y"], slice(5, None))])
    assert isinstance(joined, Rows) and isinstance(joined.source, Joined) and "2 parts" in repr(joined)
    np.testing.assert_array_equal(np.asarray(joined), in_memory["y"])
    np.testing.assert_array_equal(joined[np.array([7, 2, 5, 4])], in_memory["y"][[7, 2, 5, 4]])
    with pytest.raises(ValueError, match="one row shape and dtype"):
        Joined([in_memory["y"], in_memory["y"][:, :3]])
    with pytest.raises(ValueError, match="appended to a file of"):
        SpillFile(np.dtype(np.float32), (3,)).append(np.zeros((2, 4), np.float32))


def test_an_output_listed_twice_comes_back_once_with_every_sample() -> None:
    """A graph may list one output twice (a fuzzed export did): each batch gave it twice, which overflowed the
    output array (a ValueError traceback)."""
    model = parser.parse_model(ADD)
    model.graph.output.append(model.graph.output[0])
    x = np.zeros((20, 1024), np.float32)
    outputs, _ = run_dataset(create_session(model), Dataset({"x": x}, frozenset(), True), RuntimeConfig(batch_size=8))
    assert list(outputs) == ["y"] and outputs["y"].shape == (20, 1024)


def _clustered(rng: np.random.Generator) -> onnx.ModelProto:
    """y = x · W with W = Gather(codebook[16], Cast(indices[64, 32] → int32)): what onnxruntime folds at load."""
    from onnx import helper, numpy_helper

    codebook = numpy_helper.from_array(np.sort(rng.standard_normal(16)).astype(np.float32), "codebook")
    indices = numpy_helper.from_array(rng.integers(0, 16, (64, 32)).astype(np.uint8), "indices")
    nodes = [helper.make_node("Cast", ["indices"], ["index"], to=onnx.TensorProto.INT32),
             helper.make_node("Gather", ["codebook", "index"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "clustered", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 32])],
                              [codebook, indices])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_folding_too_big_for_memory_is_left_to_run_time(rng: np.random.Generator, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime holds every folded value until folding ends (a clustered 3.35 GB GPT-2 took 16.6 GB to load):
    past ``FOLDING_LIMIT`` and the model's weights, graphopt's sessions (from a model or a file) run the unpacking
    instead, with the same outputs; below, they fold as deployed."""
    from graphopt import runtime

    model = _clustered(rng)
    monkeypatch.setattr(runtime, "_FOLDING_SCAN", 0)
    assert runtime.folded_bytes(model) == 64 * 32 * 4 * 2  # the int32 indices and the float weight
    made: list[list[str]] = []
    real = runtime.ort.InferenceSession

    def recording(*args: object, disabled_optimizers: list[str], **kwargs: object) -> object:
        made.append(disabled_optimizers)
        return real(*args, disabled_optimizers=disabled_optimizers, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    x = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    folded = create_session(model).run(None, x)[0]
    monkeypatch.setattr(runtime, "FOLDING_LIMIT", 1000)
    unfolded = create_session(model).run(None, x)[0]
    onnx.save_model(model, tmp_path / "m.onnx")
    create_session(tmp_path / "m.onnx")
    assert made == [[], ["ConstantFolding"], ["ConstantFolding"]]
    np.testing.assert_array_equal(folded, unfolded)
    model.graph.input.append(onnx.helper.make_tensor_value_info("indices", onnx.TensorProto.UINT8, [64, 32]))
    assert runtime.folded_bytes(model) == 0, "an initializer a caller may feed is not folded"
