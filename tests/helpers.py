"""Test helpers: an onnxruntime runner and small seeded models (importable as ``helpers``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, parser

from graphopt.data import Dataset
from graphopt.pass_base import PassContext

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# Conv → Relu → depthwise 3×3 Conv (padded) → Relu → 1×1 Conv: a channel chain through a depthwise layer.
DEPTHWISE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,6,6] x) => (float[N,5,6,6] y) {
  c = Conv <kernel_shape: ints = [1, 1]> (x, k1, c1)
  r = Relu(c)
  d = Conv <kernel_shape: ints = [3, 3], pads: ints = [1, 1, 1, 1], group: int = 8> (r, kd, cd)
  s = Relu(d)
  y = Conv <kernel_shape: ints = [1, 1]> (s, k2, c2)
}"""


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    """Outputs of ``model`` under onnxruntime (graph optimisations off unless asked)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: np.asarray(feed) for name, feed in feeds.items()})  # a Dataset's columns too


def mlp(seed: int = 0, hidden: int = 16, features: int = 8, classes: int = 4) -> onnx.ModelProto:
    """x[N,features] → Gemm → Relu → Gemm → logits[N,classes], seeded weights as initializers."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((features, hidden)) / np.sqrt(features),
        "b1": rng.standard_normal(hidden) * 0.1,
        "w2": rng.standard_normal((hidden, classes)) / np.sqrt(hidden),
        "b2": rng.standard_normal(classes) * 0.1,
    }
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def text_model(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    """An ONNX-text model plus ``arrays`` as initializers, checked in full."""
    model = parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def random_feeds(model: onnx.ModelProto, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (integer inputs: ids in [0, 8), valid for any table of 8 rows or more) with every
    symbolic axis set to ``count``."""
    out = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else count for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        out[value.name] = (rng.integers(0, 8, dims).astype(dtype) if np.issubdtype(dtype, np.integer)
                           else rng.standard_normal(dims).astype(np.float32))
    return out


def calibration(model: onnx.ModelProto, rng: np.random.Generator, count: int = 64) -> PassContext:
    """A pass context whose calibration samples are ``count`` random feeds."""
    return PassContext(calibration=Dataset(random_feeds(model, count, rng), frozenset(), True))


def digits(samples: int) -> tuple[onnx.ModelProto, Dataset]:
    """The bundled digits CNN and its first ``samples`` real images ([N, 1, 8, 8] in [0, 1]) with their labels."""
    from graphopt.data import input_specs, load_data

    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model), EXAMPLES / "digits_labels.npy")
    return model, data.subset(np.arange(samples))


def figure(check: object, key: str) -> float:
    """A validation check's metric that must be present (``None`` fails the test)."""
    value = check.metrics[key]  # type: ignore[attr-defined]
    assert value is not None, (check.name, key)  # type: ignore[attr-defined]
    return float(value)


DETECTOR = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16,16,16] x) => (float[N,32,8,8] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, w1, b1)
  s1 = Sigmoid(c1)
  a1 = Mul(c1, s1)
  c2 = Conv <pads = [1,1,1,1]> (a1, w2, b2)
  s2 = Sigmoid(c2)
  a2 = Mul(c2, s2)
  p = MaxPool <kernel_shape = [3,3], pads = [1,1,1,1]> (a2)
  cat = Concat <axis = 1> (a1, p)
  d = MaxPool <kernel_shape = [2,2], strides = [2,2]> (cat)
  u = Resize <mode = "MODE"> (d, roi, scales)
  t = Add(cat, u)
  y = Conv <pads = [1,1,1,1], strides = [2,2]> (t, w3, b3)
}"""
"""A YOLO-style block: SiLU (Sigmoid · Mul) after each Conv, an SPP-style MaxPool, a Concat of two branches, a
downsample and a Resize back up added to the Concat."""


def detector(rng: np.random.Generator, mode: str = "nearest") -> onnx.ModelProto:
    """``DETECTOR`` with seeded weights (scaled by fan-in) and its Resize in ``mode``."""
    def weight(*shape: int) -> np.ndarray:
        fan_in = np.prod(shape[1:]) if len(shape) > 1 else shape[0]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return text_model(DETECTOR.replace("MODE", mode), w1=weight(16, 16, 3, 3), b1=weight(16),
                      w2=weight(16, 16, 3, 3), b2=weight(16), w3=weight(32, 32, 3, 3), b3=weight(32),
                      roi=np.zeros(0, np.float32), scales=np.array([1, 1, 2, 2], np.float32))


class RecordedProgress:
    """Every progress task opened, in order, with its total and how far it was advanced."""

    def __init__(self) -> None:
        self.tasks: list[list] = []

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.tasks]

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        record = [label, total, 0]
        self.tasks.append(record)

        def advance(n: int) -> None:
            record[2] += n

        yield advance
