"""Bounded, seeded fuzzing of ``graphopt optimize`` with mutated models and mutated data files.

Every mutant goes through ``graphopt.cli.main([...], out=io.StringIO())`` in-process, and for every one this
asserts the README's command-line promises: the exit code is one of 0, 2, 3, 4, 5 (never 1, an internal error,
which in-process is an exception escaping ``main``), no ``Traceback`` on stderr, exactly one ``graphopt: error:``
line on stderr on failure, nothing written on failure (neither ``out.onnx`` nor ``out.report.json`` nor a
``.graphopt-*`` staging folder, inputs untouched), and on success an output that passes
``onnx.checker.check_model(full_check=True)`` and loads in onnxruntime. Data mutants are held to the data codes:
5 for data the README calls wrong (dtype, shape, NaN/Inf, no samples, pickles, unreadable), 0 or 5 otherwise.

Models: six small valid seeds (a Conv/Relu/Gemm CNN, a MatMul/Add MLP, a model with ``Constant`` nodes, a model
with an ``If`` whose branches read outer-scope tensors, an MLP whose weights are external data, and the committed
``examples/digits_cnn.onnx``), mutated at the protobuf level (dims, element types, initializers, dangling names,
op types, attributes, opsets, IR versions, graph inputs/outputs, tensor payloads, functions, external-data fields)
and at the byte level (truncation, flips, splices), run with the default lossless pipeline on ``--data random``
(the digits seed also on its real data). Data: ``.npz``/``.npy`` files, folders, headers and bytes mutated against
the digits seed in real-data mode.

Guard (the design choice): the cases run in two worker subprocesses (one per core), each limited to
``MEMORY_LIMIT`` of address space (``RLIMIT_AS``), each case to ``CASE_TIMEOUT`` seconds. A mutant that would
allocate terabytes gets a ``MemoryError`` (reported as exit 1 with where it was raised); one that hangs (a FIFO)
is interrupted by SIGALRM and reported with the stack it hung in; native code deaf to the alarm is ended by
``faulthandler`` (stack dumped) and a native crash by its signal, and the parent then starts a new worker for the
rest of the batch (and kills a worker that misses even that deadline). Inside a worker each case is an in-process
``main()`` call: fast, no interpreter start or onnxruntime warm-up per case (a subprocess per case would cost ~3 s
each here). Stderr is captured at the file-descriptor level, so onnxruntime's native log lines and Python warnings
count, and warnings' once-per-location registry is reset per case, as in a fresh process.

Reproducing: every case has an id (``model/cnn/proto/017``) and a label naming its seed tuple and mutations;
``GRAPHOPT_FUZZ_ONLY=model/cnn/proto/017,data/named/container/fifo pytest tests/test_fuzz_cli.py`` re-runs just
those (cases are generated whole, so ids and seeds do not shift), and the failure message prints the exact command
line, whose paths are the case folder (kept by pytest) holding the inputs. ``GRAPHOPT_FUZZ_DUMP=file.json`` writes
every result for triage.
"""

from __future__ import annotations

import faulthandler
import hashlib
import io
import json
import os
import pickle
import queue
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"
DIGITS_DATA = EXAMPLES / "digits.npz"
SEED = 20261125
ALLOWED = (0, 2, 3, 4, 5)
PREFIX = "graphopt: error: "
WORKERS = max(1, min(2, os.cpu_count() or 1))
MEMORY_LIMIT = 2 * 2**30
"""Address space per worker (two workers: at most 4 GiB): far above a healthy run's (~0.35 GB), far below what a
terabyte-sized dim or header asks for."""
CASE_TIMEOUT = 5.0
"""Seconds one case may take (a healthy one takes under 0.6 s): then SIGALRM interrupts it with ``CaseTimeout``;
native code deaf to it is ended by ``faulthandler`` 3 s later, stack dumped."""
MODEL_MUTANTS = 300
DATA_MUTANTS = 100
ONLY = {c for c in os.environ.get("GRAPHOPT_FUZZ_ONLY", "").split(",") if c}

Special = tuple[str, str]
"""An input that is not a regular file: ("symlink", target), ("dir", ""), ("fifo", "")."""


@dataclass
class Case:
    id: str
    label: str
    files: dict[str, bytes | Special | str]  # str: a pickle payload made in the case folder (``_materialise``)
    model: str  # a file name in the case folder, or an absolute path
    data: str  # "random", a name in the case folder, or an absolute path
    allowed: tuple[int, ...] = ALLOWED
    folder: str = ""
    argv: list[str] = field(default_factory=list)


def _pick(rng: np.random.Generator, seq: list[Any] | tuple[Any, ...]) -> Any:
    return seq[int(rng.integers(len(seq)))]


# --- seed models ----------------------------------------------------------------------------------------------------


def _f32(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: dict[str, np.ndarray], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fuzz")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def cnn_model() -> onnx.ModelProto:
    """x[N,1,8,8] → Conv(16, 8 of them all-zero) → Relu → MaxPool → Flatten → Gemm → y[N,3]."""
    rng = np.random.default_rng(1)
    w1 = _f32(rng, 16, 1, 3, 3)
    w1[8:] = 0
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 1, 8, 8])], [_vi("y", TensorProto.FLOAT, ["N", 3])],
                  {"w1": w1, "b1": np.zeros(16, np.float32), "w2": _f32(rng, 3, 256), "b2": _f32(rng, 3)}, "cnn")


def _mlp_parts(rng: np.random.Generator) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    w1 = _f32(rng, 6, 8)
    w1[:, 5] = 0  # one all-zero hidden unit: zero-weight-elimination has work
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["a"], name="add1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["h2"], name="mm2"),
        helper.make_node("Add", ["h2", "b2"], ["y"], name="add2"),
    ]
    b1 = _f32(rng, 8)
    b1[5] = 0
    return nodes, {"w1": w1, "b1": b1, "w2": _f32(rng, 8, 3), "b2": _f32(rng, 3)}


def mlp_model() -> onnx.ModelProto:
    nodes, weights = _mlp_parts(np.random.default_rng(2))
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 6])], [_vi("y", TensorProto.FLOAT, ["N", 3])], weights,
                  "mlp")


def constant_model() -> onnx.ModelProto:
    """Constant nodes of every kind (tensor, float, ints) and an int64 input feeding a Gather."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Constant", [], ["w"], name="cw", value=numpy_helper.from_array(_f32(rng, 4, 4), "w")),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Constant", [], ["s"], name="cs", value_float=0.5),
        helper.make_node("Mul", ["h", "s"], ["hs"], name="mul"),
        helper.make_node("Constant", [], ["t"], name="ct", value=numpy_helper.from_array(_f32(rng, 100, 4), "t")),
        helper.make_node("Gather", ["t", "ids"], ["g"], name="gather", axis=0),
        helper.make_node("Constant", [], ["ax"], name="cax", value_ints=[1]),
        helper.make_node("ReduceSum", ["g", "ax"], ["gs"], name="sum", keepdims=0),
        helper.make_node("Add", ["hs", "gs"], ["y"], name="add"),
    ]
    inputs = [_vi("x", TensorProto.FLOAT, ["N", 4]), _vi("ids", TensorProto.INT64, ["N", 2])]
    return _model(nodes, inputs, [_vi("y", TensorProto.FLOAT, ["N", 4])], {}, "constants")


def if_model() -> onnx.ModelProto:
    """If(sum(x) > 0): then (x + c1) * c3 (c3 a branch initializer), else x * c2; branches read outer tensors."""
    rng = np.random.default_rng(4)
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "c1"], ["a"], name="then_add"),
         helper.make_node("Mul", ["a", "c3"], ["t_out"], name="then_mul")],
        "then", [], [_vi("t_out", TensorProto.FLOAT, ["N", 4])], [numpy_helper.from_array(_f32(rng, 4), "c3")])
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "c2"], ["e_out"], name="else_mul")],
        "else", [], [_vi("e_out", TensorProto.FLOAT, ["N", 4])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 4])], [_vi("y", TensorProto.FLOAT, ["N", 4])],
                  {"c1": _f32(rng, 4), "c2": _f32(rng, 4), "zero": np.zeros((), np.float32)}, "if")


def external_model() -> tuple[onnx.ModelProto, bytes]:
    """The MLP with every initializer in ``weights.bin`` beside the model (64-byte aligned)."""
    nodes, weights = _mlp_parts(np.random.default_rng(5))
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 6])], [_vi("y", TensorProto.FLOAT, ["N", 3])],
                   weights, "external")
    blob = bytearray()
    for tensor in model.graph.initializer:
        raw = tensor.raw_data
        blob += b"\0" * (-len(blob) % 64)
        offset = len(blob)
        blob += raw
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return model, bytes(blob)


@dataclass
class SeedModel:
    name: str
    model: onnx.ModelProto
    files: dict[str, bytes | Special]
    data: tuple[str, ...] = ("random",)


def seed_models() -> list[SeedModel]:
    ext, blob = external_model()
    return [
        SeedModel("cnn", cnn_model(), {}),
        SeedModel("mlp", mlp_model(), {}),
        SeedModel("const", constant_model(), {}),
        SeedModel("if", if_model(), {}),
        SeedModel("ext", ext, {"weights.bin": blob}),
        SeedModel("digits", onnx.load(DIGITS), {}, ("random", str(DIGITS_DATA))),
    ]


# --- protobuf-level mutations ---------------------------------------------------------------------------------------

DIM_VALUES = [0, 0, -1, -1, -2, -1000, 2**40, 2**40, 2**31, 2**31 - 1, 2**62, 2**63 - 1, -(2**63), 1, 2, 7, 4096]
ELEM_TYPES = [0, 0, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 22, 23, 24, 25, 26, 27, 33, 99, 1000, -1,
              2**31 - 1]
INT_VALUES = [0, -1, -2, -100, 2, 3, 5, 100, 2**31, 2**40, 2**63 - 1, -(2**63)]
OPSETS = [0, 1, 5, 6, 7, 9, 11, 13, 17, 19, 21, 22, 23, 24, 25, 26, 30, 1000, -1, 2**40, 2**63 - 1]
IR_VERSIONS = [0, -1, 1, 2, 3, 4, 6, 7, 9, 10, 11, 12, 13, 99, 2**40, 2**63 - 1]
OP_TYPES = ["Relu", "Sigmoid", "Identity", "Add", "MatMul", "Conv", "Gemm", "Softmax", "Reshape", "Loop", "If",
            "Scan", "Constant", "ConstantOfShape", "Expand", "Tile", "Resize", "Dropout", "Cast", "Split", "Concat",
            "Foo", "", "relu", "MatMulNBits", "QLinearConv", "TreeEnsembleClassifier"]
DOMAINS = ["", "ai.onnx", "com.microsoft", "ai.onnx.ml", "bogus.domain", "local"]
DIM_PARAMS = ["", "N", "M", "x" * 1000, "\u00e9\u00e8", "N N", "0", "-1"]


def _graphs(graph: onnx.GraphProto, path: str = "graph") -> Iterator[tuple[str, onnx.GraphProto]]:
    yield path, graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g, f"{path}/{node.name or node.op_type}.{attr.name}")
            for i, sub in enumerate(attr.graphs):
                yield from _graphs(sub, f"{path}/{node.name or node.op_type}.{attr.name}[{i}]")


def _value_infos(model: onnx.ModelProto) -> list[tuple[str, onnx.ValueInfoProto]]:
    found = []
    for path, graph in _graphs(model.graph):
        for kind in ("input", "output", "value_info"):
            for value in getattr(graph, kind):
                if value.type.HasField("tensor_type"):
                    found.append((f"{path}.{kind}[{value.name}]", value))
    return found


def _tensors(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto]]:
    found = []
    for path, graph in _graphs(model.graph):
        found += [(f"{path}.initializer[{t.name}]", t) for t in graph.initializer]
        for node in graph.node:
            found += [(f"{path}/{node.name}.{a.name}", a.t) for a in node.attribute
                      if a.type == onnx.AttributeProto.TENSOR]
    return found


def _nodes(model: onnx.ModelProto) -> list[tuple[str, onnx.GraphProto, onnx.NodeProto]]:
    return [(f"{path}/{n.name or n.op_type}", g, n) for path, g in _graphs(model.graph) for n in g.node]


class Mutator:
    """One mutation of a model proto (and of the files beside it); each op returns a description or ``None`` when
    it does not apply to this model."""

    def __init__(self, rng: np.random.Generator, model: onnx.ModelProto, files: dict[str, bytes | Special]) -> None:
        self.rng, self.model, self.files = rng, model, files

    def ops(self) -> list[Callable[[], str | None]]:
        generic = [self.dim, self.dim, self.dim, self.init_dims, self.init_dims, self.elem_type, self.elem_type,
                   self.del_init, self.dup_init, self.dangle, self.dangle, self.rename_output, self.node_order,
                   self.op_type, self.attribute, self.attribute, self.opset, self.ir_version, self.graph_io,
                   self.graph_io, self.tensor_data, self.tensor_data, self.function, self.ragged]
        if any(t.data_location == TensorProto.EXTERNAL for _, t in _tensors(self.model)):
            generic += [self.external] * 18
        if any(n.op_type == "If" for _, _, n in _nodes(self.model)):
            generic += [self.if_branch] * 5
        return generic

    def mutate(self, count: int) -> list[str]:
        done: list[str] = []
        ops = self.ops()
        for _ in range(100):
            if len(done) == count:
                break
            try:
                description = _pick(self.rng, ops)()
            except (IndexError, ValueError, StopIteration):  # nothing left to mutate that way (an earlier op)
                description = None
            if description:
                done.append(description)
        return done

    def dim(self) -> str | None:
        label, value = _pick(self.rng, _value_infos(self.model))
        shape = value.type.tensor_type.shape
        how = _pick(self.rng, ["value"] * 6 + ["param", "no-shape", "add", "remove"])
        if how == "no-shape":
            value.type.tensor_type.ClearField("shape")
            return f"{label}: shape removed"
        if how == "add" or not shape.dim:
            v = _pick(self.rng, DIM_VALUES)
            shape.dim.add().dim_value = v
            return f"{label}: dim {v} appended"
        axis = int(self.rng.integers(len(shape.dim)))
        if how == "remove":
            del shape.dim[axis]
            return f"{label}: dim[{axis}] removed"
        if how == "param":
            p = _pick(self.rng, DIM_PARAMS)
            shape.dim[axis].dim_param = p
            return f"{label}: dim[{axis}] := param {p[:20]!r}"
        v = _pick(self.rng, DIM_VALUES)
        shape.dim[axis].dim_value = v
        return f"{label}: dim[{axis}] := {v}"

    def init_dims(self) -> str | None:
        tensors = _tensors(self.model)
        if not tensors:
            return None
        label, tensor = _pick(self.rng, tensors)
        how = _pick(self.rng, ["value", "value", "value", "add", "remove"])
        if how == "add" or not tensor.dims:
            v = _pick(self.rng, DIM_VALUES)
            tensor.dims.append(v)
            return f"{label}: dims += [{v}]"
        axis = int(self.rng.integers(len(tensor.dims)))
        if how == "remove":
            del tensor.dims[axis]
            return f"{label}: dims[{axis}] removed"
        v = _pick(self.rng, DIM_VALUES)
        tensor.dims[axis] = v
        return f"{label}: dims[{axis}] := {v}"

    def elem_type(self) -> str | None:
        v = _pick(self.rng, ELEM_TYPES)
        if self.rng.random() < 0.5 and _tensors(self.model):
            label, tensor = _pick(self.rng, _tensors(self.model))
            tensor.data_type = v
            return f"{label}: data_type := {v}"
        label, value = _pick(self.rng, _value_infos(self.model))
        value.type.tensor_type.elem_type = v
        return f"{label}: elem_type := {v}"

    def del_init(self) -> str | None:
        graphs = [(p, g) for p, g in _graphs(self.model.graph) if g.initializer]
        if not graphs:
            return None
        path, graph = _pick(self.rng, graphs)
        i = int(self.rng.integers(len(graph.initializer)))
        name = graph.initializer[i].name
        del graph.initializer[i]
        return f"{path}: initializer {name} deleted"

    def dup_init(self) -> str | None:
        graphs = [(p, g) for p, g in _graphs(self.model.graph) if g.initializer]
        if not graphs:
            return None
        path, graph = _pick(self.rng, graphs)
        original = _pick(self.rng, list(graph.initializer))
        copy = graph.initializer.add()
        copy.CopyFrom(original)
        how = _pick(self.rng, ["same", "other-values", "other-shape"])
        if how == "other-values" and copy.raw_data:
            copy.raw_data = bytes(b ^ 0x5A for b in copy.raw_data)
        elif how == "other-shape":
            copy.dims.append(1)
        return f"{path}: initializer {original.name} duplicated ({how})"

    def dangle(self) -> str | None:
        candidates = [(p, n) for p, _, n in _nodes(self.model) if any(n.input)]
        if not candidates:
            return None
        path, node = _pick(self.rng, candidates)
        slots = [i for i, name in enumerate(node.input) if name]
        i = _pick(self.rng, slots)
        new = _pick(self.rng, [f"dangling_{int(self.rng.integers(100))}", "", node.output[0], "x" * 5000])
        old, node.input[i] = node.input[i], new
        return f"{path}: input[{i}] {old} := {new[:20]!r}"

    def rename_output(self) -> str | None:
        path, graph, node = _pick(self.rng, _nodes(self.model))
        names = [n for other in graph.node for n in other.output if n] + [i.name for i in graph.input]
        new = _pick(self.rng, ["dangling_out", "", _pick(self.rng, names)])
        old, node.output[0] = node.output[0], new
        return f"{path}: output[0] {old} := {new!r}"

    def node_order(self) -> str | None:
        path, graph = _pick(self.rng, list(_graphs(self.model.graph)))
        nodes = list(graph.node)
        how = _pick(self.rng, ["reverse", "delete", "duplicate", "shuffle"])
        if how == "reverse":
            nodes.reverse()
        elif how == "delete":
            del nodes[int(self.rng.integers(len(nodes)))]
        elif how == "duplicate":
            nodes.insert(int(self.rng.integers(len(nodes) + 1)), _pick(self.rng, nodes))
        else:
            nodes = [nodes[i] for i in self.rng.permutation(len(nodes))]
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)
        return f"{path}: nodes {how}"

    def op_type(self) -> str | None:
        path, _, node = _pick(self.rng, _nodes(self.model))
        old = node.op_type
        node.op_type = _pick(self.rng, OP_TYPES)
        description = f"{path}: op_type {old} := {node.op_type!r}"
        if self.rng.random() < 0.3:
            node.domain = _pick(self.rng, DOMAINS)
            description += f", domain := {node.domain!r}"
        return description

    def attribute(self) -> str | None:
        path, _, node = _pick(self.rng, _nodes(self.model))
        if not node.attribute or self.rng.random() < 0.2:
            name = _pick(self.rng, ["axis", "kernel_shape", "pads", "group", "bogus", "transB", "perm"])
            node.attribute.append(helper.make_attribute(name, _pick(self.rng, [_pick(self.rng, INT_VALUES),
                                                                               [2**40, 0], [-1], 1.5, "s"])))
            return f"{path}: attribute {name} added"
        attr = _pick(self.rng, list(node.attribute))
        how = _pick(self.rng, ["value", "value", "value", "delete", "duplicate", "retype"])
        if how == "delete":
            node.attribute.remove(attr)
            return f"{path}: attribute {attr.name} deleted"
        if how == "duplicate":
            node.attribute.add().CopyFrom(attr)
            return f"{path}: attribute {attr.name} duplicated"
        if how == "retype":
            new_type = _pick(self.rng, [t for t in (1, 2, 3, 4, 5, 6, 7, 8) if t != attr.type])
            attr.type = new_type
            return f"{path}: attribute {attr.name} type := {new_type} (payload kept)"
        A = onnx.AttributeProto
        if attr.type == A.INT:
            attr.i = _pick(self.rng, INT_VALUES)
            return f"{path}: {attr.name} := {attr.i}"
        if attr.type == A.INTS:
            values = list(attr.ints) or [1]
            values[int(self.rng.integers(len(values)))] = _pick(self.rng, INT_VALUES)
            if self.rng.random() < 0.3:
                values = values[:-1] if self.rng.random() < 0.5 else [*values, 1]
            del attr.ints[:]
            attr.ints.extend(values)
            return f"{path}: {attr.name} := {values}"
        if attr.type == A.FLOAT:
            attr.f = _pick(self.rng, [float("nan"), float("inf"), -1e38, 0.0, -1.0])
            return f"{path}: {attr.name} := {attr.f}"
        if attr.type == A.GRAPH:
            how = _pick(self.rng, ["empty", "no-outputs", "two-outputs"])
            if how == "empty":
                attr.g.CopyFrom(helper.make_graph([], "empty", [], []))
            elif how == "no-outputs":
                del attr.g.output[:]
            else:
                attr.g.output.add().CopyFrom(attr.g.output[0])
            return f"{path}: {attr.name} subgraph {how}"
        if attr.type == A.TENSOR:
            return self._tensor_payload(f"{path}.{attr.name}", attr.t)
        attr.ClearField("ints")
        return f"{path}: attribute {attr.name} cleared"

    def opset(self) -> str | None:
        how = _pick(self.rng, ["version"] * 5 + ["remove", "second", "domain"])
        if how == "remove":
            del self.model.opset_import[:]
            return "opset_import removed"
        if how == "second":
            self.model.opset_import.append(helper.make_opsetid("", _pick(self.rng, OPSETS)))
            return f"second default opset {self.model.opset_import[-1].version}"
        if how == "domain":
            domain, version = _pick(self.rng, ["com.microsoft", "ai.onnx.ml", "bogus", ""]), _pick(self.rng, OPSETS)
            self.model.opset_import.append(helper.make_opsetid(domain, version))
            return f"opset import {domain!r} {version} added"
        version = _pick(self.rng, OPSETS)
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version
        return f"default opset := {version}"

    def ir_version(self) -> str | None:
        self.model.ir_version = _pick(self.rng, IR_VERSIONS)
        return f"ir_version := {self.model.ir_version}"

    def graph_io(self) -> str | None:
        graph = self.model.graph
        how = _pick(self.rng, ["del-output", "del-input", "dup-input", "extra-input", "rename-input",
                               "output-is-input", "init-as-input", "dup-output"])
        if how == "del-output":
            del graph.output[int(self.rng.integers(len(graph.output)))]
        elif how == "del-input" and graph.input:
            del graph.input[int(self.rng.integers(len(graph.input)))]
        elif how == "dup-input" and graph.input:
            graph.input.add().CopyFrom(_pick(self.rng, list(graph.input)))
        elif how == "extra-input":
            elem = _pick(self.rng, [1, 1, 7, 9, 10, 16, 0, 8])
            dims = [_pick(self.rng, ["N", 1, 2**40, 2**31, 0, -1, 3]) for _ in range(int(self.rng.integers(0, 4)))]
            graph.input.append(_vi("unused", elem, dims))
            return f"extra unused input elem {elem} dims {dims}"
        elif how == "rename-input" and graph.input:
            graph.input[0].name = _pick(self.rng, ["renamed", "", "y"])
            return f"graph input[0] renamed {graph.input[0].name!r}"
        elif how == "output-is-input" and graph.input:
            graph.output[0].name = graph.input[0].name
        elif how == "init-as-input" and graph.initializer:
            tensor = _pick(self.rng, list(graph.initializer))
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
            return f"initializer {tensor.name} also a graph input"
        elif how == "dup-output":
            graph.output.add().CopyFrom(graph.output[0])
        else:
            return None
        return f"graph {how}"

    def tensor_data(self) -> str | None:
        tensors = _tensors(self.model)
        if not tensors:
            return None
        label, tensor = _pick(self.rng, tensors)
        return self._tensor_payload(label, tensor)

    def _tensor_payload(self, label: str, tensor: onnx.TensorProto) -> str:
        how = _pick(self.rng, ["truncate", "extend", "clear", "float_data-too", "nan-inf", "external-no-entries",
                               "external-inline", "string_data", "huge-float"])
        if how == "truncate" and tensor.raw_data:
            tensor.raw_data = tensor.raw_data[: int(self.rng.integers(len(tensor.raw_data)))]
        elif how == "extend" and tensor.raw_data:
            tensor.raw_data = tensor.raw_data + b"\x00" * int(self.rng.integers(1, 64))
        elif how == "clear":
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
        elif how == "float_data-too":
            tensor.float_data.extend([1.0, 2.0, 3.0])
        elif how in ("nan-inf", "huge-float") and tensor.raw_data and tensor.data_type == TensorProto.FLOAT:
            values = np.frombuffer(tensor.raw_data, np.float32).copy()
            index = self.rng.integers(len(values), size=max(1, len(values) // 8))
            values[index] = _pick(self.rng, [np.nan, np.inf, -np.inf]) if how == "nan-inf" else 3e38
            tensor.raw_data = values.tobytes()
        elif how == "external-no-entries":
            tensor.data_location = TensorProto.EXTERNAL
        elif how == "external-inline":
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "nothing.bin"), ("offset", "0")):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        elif how == "string_data":
            tensor.string_data.append(b"\xff\xfe")
        else:
            tensor.ClearField("raw_data")
            how = "clear"
        return f"{label}: payload {how}"

    def function(self) -> str | None:
        path, _, node = _pick(self.rng, _nodes(self.model))
        how = _pick(self.rng, ["valid", "recursive", "missing", "wrong-arity"])
        n_in, n_out = len(node.input), len(node.output)
        inputs = [f"i{k}" for k in range(n_in)]
        if how == "valid":
            body = [helper.make_node("Identity", [inputs[0]], [f"o{k}"]) for k in range(n_out)] if n_in else []
        elif how == "recursive":
            body = [helper.make_node("F", inputs, [f"o{k}" for k in range(n_out)], domain="local")]
        else:
            body = [helper.make_node("Identity", ["nowhere"], [f"o{k}"]) for k in range(n_out)]
        if how != "missing":
            function = helper.make_function("local", "F", inputs if how != "wrong-arity" else inputs[:1],
                                            [f"o{k}" for k in range(n_out)], body,
                                            [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
            self.model.functions.append(function)
        node.op_type, node.domain = "F", "local"
        node.ClearField("attribute")
        self.model.opset_import.append(helper.make_opsetid("local", 1))
        return f"{path}: replaced by local function F ({how})"

    def ragged(self) -> str | None:
        """An extra output whose shape depends on the values (NonZero, Compress, Unique): ragged across samples."""
        outputs = [o for o in self.model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
        if not outputs:
            return None
        source = outputs[0].name
        how = _pick(self.rng, ["nonzero", "compress", "unique"])
        zero = numpy_helper.from_array(np.zeros((), np.float32), "fuzz_zero")
        axes = numpy_helper.from_array(np.array([1], np.int64), "fuzz_axes")
        nodes = {
            "nonzero": [helper.make_node("Greater", [source, "fuzz_zero"], ["fuzz_b"]),
                        helper.make_node("NonZero", ["fuzz_b"], ["fuzz_out"])],
            "compress": [helper.make_node("ReduceSum", [source, "fuzz_axes"], ["fuzz_s"], keepdims=0),
                         helper.make_node("Greater", ["fuzz_s", "fuzz_zero"], ["fuzz_b"]),
                         helper.make_node("Compress", [source, "fuzz_b"], ["fuzz_out"], axis=0)],
            "unique": [helper.make_node("Greater", [source, "fuzz_zero"], ["fuzz_b"]),
                       helper.make_node("Cast", ["fuzz_b"], ["fuzz_i"], to=TensorProto.INT64),
                       helper.make_node("Unique", ["fuzz_i"], ["fuzz_out"])],
        }[how]
        self.model.graph.node.extend(nodes)
        self.model.graph.initializer.extend([zero, axes])
        elem = TensorProto.FLOAT if how == "compress" else TensorProto.INT64
        self.model.graph.output.append(_vi("fuzz_out", elem, ["K", 3] if how == "compress" else [2, "K"]
                                           if how == "nonzero" else ["K"]))
        return f"extra value-dependent output {how}({source})"

    def external(self) -> str | None:
        tensors = [(label, t) for label, t in _tensors(self.model) if t.data_location == TensorProto.EXTERNAL]
        label, tensor = _pick(self.rng, tensors)
        entries = {e.key: e for e in tensor.external_data}
        how = _pick(self.rng, ["location"] * 6 + ["offset"] * 3 + ["length"] * 3 +
                    ["no-location", "extra-key", "dup-key", "inline-too", "default-location"])
        if how == "location":
            choice = _pick(self.rng, [
                "../x", "../weights.bin", "/etc/passwd", "ABS", "a\x00b", "weights.bin\x00", "x" * 300, "x" * 5000,
                "", ".", "sub", "sub/../weights.bin", "./weights.bin", "weights.bin/", "~/weights.bin",
                "file:weights.bin", "..\\x", "weights.bin\n", "\u00e9t\u00e9.bin", "link.bin", "fifo.bin",
                "loop.bin", "/dev/zero", "/proc/self/mem", "dir.bin", "a/" * 200 + "w.bin",
            ])
            if choice == "ABS":
                choice = "ABSOLUTE_CASE_FOLDER/weights.bin"  # replaced by the case folder when written
            elif choice == "link.bin":
                self.files["link.bin"] = ("symlink", str(DIGITS))
            elif choice == "fifo.bin":
                self.files["fifo.bin"] = ("fifo", "")
            elif choice == "loop.bin":
                self.files["loop.bin"] = ("symlink", "loop.bin")
            elif choice in ("dir.bin", "sub"):
                self.files[choice] = ("dir", "")
            entries["location"].value = choice
            return f"{label}: location := {choice[:40]!r} (len {len(choice)})"
        if how in ("offset", "length"):
            value = _pick(self.rng, ["-1", "-4096", "0", "1", "3", str(2**40), str(2**63 - 1), str(2**64), "abc",
                                     "", "1.5", "0x10", " 4", "1e3", "-0"])
            if how in entries:
                entries[how].value = value
            else:
                entry = tensor.external_data.add()
                entry.key, entry.value = how, value
            return f"{label}: {how} := {value!r}"
        if how == "no-location":
            tensor.external_data.remove(entries["location"])
        elif how == "extra-key":
            entry = tensor.external_data.add()
            entry.key, entry.value = _pick(self.rng, [("checksum", "abc"), ("basepath", "/"), ("", ""),
                                                      ("loc\x00ation", "x")])
        elif how == "dup-key":
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", _pick(self.rng, ["../x", "weights.bin", "other.bin"])
        elif how == "inline-too":
            tensor.raw_data = b"\x00" * 16
        else:
            tensor.data_location = TensorProto.DEFAULT
        return f"{label}: external data {how}"

    def if_branch(self) -> str | None:
        node = next(n for _, _, n in _nodes(self.model) if n.op_type == "If")
        how = _pick(self.rng, ["del-branch", "swap-types", "branch-input", "extra-output", "cond-float"])
        if how == "del-branch":
            node.attribute.remove(_pick(self.rng, list(node.attribute)))
        elif how == "swap-types":
            branch = _pick(self.rng, list(node.attribute)).g
            branch.output[0].type.tensor_type.elem_type = _pick(self.rng, [7, 10, 11, 0])
        elif how == "branch-input":
            _pick(self.rng, list(node.attribute)).g.input.append(_vi("z", TensorProto.FLOAT, [2]))
        elif how == "extra-output":
            branch = _pick(self.rng, list(node.attribute)).g
            branch.output.add().CopyFrom(branch.output[0])
        else:
            node.input[0] = "s"
        return f"If: {how}"


# --- byte-level mutations -------------------------------------------------------------------------------------------


def mutate_bytes(rng: np.random.Generator, content: bytes, donors: list[bytes]) -> tuple[bytes, str]:
    data = bytearray(content)
    how = _pick(rng, ["truncate", "flip", "flip", "set", "splice", "delete", "duplicate", "ff-run"])
    n = len(data)
    a = int(rng.integers(n))
    if how == "truncate":
        return bytes(data[:a]), f"truncated at {a}"
    if how in ("flip", "set"):
        positions = sorted(int(p) for p in rng.integers(n, size=int(rng.integers(1, 9))))
        for p in positions:
            data[p] = data[p] ^ (1 << int(rng.integers(8))) if how == "flip" else int(rng.integers(256))
        return bytes(data), f"{how} bytes at {positions}"
    if how == "splice":
        donor = _pick(rng, donors)
        s = int(rng.integers(len(donor)))
        length = int(rng.integers(1, 200))
        data[a:a] = donor[s:s + length]
        return bytes(data), f"spliced {length} donor bytes from {s} at {a}"
    b = min(n, a + int(rng.integers(1, 64)))
    if how == "delete":
        del data[a:b]
    elif how == "duplicate":
        data[b:b] = data[a:b]
    else:
        data[a:b] = b"\xff" * (b - a)
    return bytes(data), f"{how} bytes {a}:{b}"


# --- model cases ----------------------------------------------------------------------------------------------------


def model_cases() -> list[Case]:
    seeds = seed_models()
    donors = [s.model.SerializeToString() for s in seeds] + [DIGITS_DATA.read_bytes()[:4096]]
    proto_counts = {"cnn": 42, "mlp": 42, "const": 42, "if": 42, "ext": 62, "digits": 36}
    cases = []
    for family, seed in enumerate(seeds, start=1):
        for i in range(proto_counts[seed.name]):
            rng = np.random.default_rng((SEED, family, i))
            model = onnx.ModelProto()
            model.CopyFrom(seed.model)
            files = dict(seed.files)
            count = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            done = Mutator(rng, model, files).mutate(count)
            data = _pick(rng, seed.data)
            try:
                content = model.SerializeToString()
            except Exception as e:  # noqa: BLE001 - a mutation protobuf cannot even serialise: not a CLI case
                content = b""
                done.append(f"(serialisation failed: {type(e).__name__})")
            cases.append(Case(f"model/{seed.name}/proto/{i:03d}",
                              f"seed=({SEED}, {family}, {i}) {'; '.join(done)} [data {Path(data).name}]",
                              {**files, "m.onnx": content}, "m.onnx", data))
        for i in range(10):
            rng = np.random.default_rng((SEED, family, 1000 + i))
            content, done = mutate_bytes(rng, seed.model.SerializeToString(), donors)
            data = _pick(rng, seed.data)
            cases.append(Case(f"model/{seed.name}/bytes/{i:03d}",
                              f"seed=({SEED}, {family}, {1000 + i}) {done} [data {Path(data).name}]",
                              {**seed.files, "m.onnx": content}, "m.onnx", data))
    cases.append(Case("model/special/fifo", "the model path is a FIFO", {"m.onnx": ("fifo", "")}, "m.onnx", "random"))
    cases.append(Case("model/special/dir", "the model path is a folder", {"m.onnx": ("dir", "")}, "m.onnx", "random"))
    cases.append(Case("model/special/symlink-loop", "the model path is a symlink to itself",
                      {"m.onnx": ("symlink", "m.onnx")}, "m.onnx", "random"))
    cases.append(Case("model/special/dev-zero", "the model is /dev/zero", {}, "/dev/zero", "random"))
    return cases


# --- data cases -----------------------------------------------------------------------------------------------------

IMAGES = np.load(DIGITS_DATA)["image"][:40]
"""40 real [1, 8, 8] float32 images: the seed data (the model's input is ``image``)."""
FAIL = (5,)
MAYBE = (0, 5)
OK = (0,)


def _npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _zip(members: list[tuple[str, bytes]], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are the point
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as archive:
            for name, content in members:
                archive.writestr(name, content)
    return buffer.getvalue()


def _header(header: str, payload: bytes = IMAGES[:4].tobytes(), version: tuple[int, int] = (1, 0),
            length: int | None = None) -> bytes:
    """A hand-written .npy: magic, version, header (padded to 16) and payload."""
    size_format = "<H" if version[0] == 1 else "<I"
    prefix = 10 if version[0] == 1 else 12
    text = header + " " * (-(len(header) + 1 + prefix) % 16) + "\n"
    declared = len(text) if length is None else length
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_format, declared) + text.encode("latin1") + payload


class _Trap:
    """Unpickling this creates the folder ``UNPICKLED``: proof that a loader ran pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (self.path,)


def _trap_array(folder_marker: str) -> np.ndarray:
    array = np.empty((4, 1, 8, 8), dtype=object)
    array.flat[0] = _Trap(folder_marker)
    return array


def _with(value: float, *index: int) -> np.ndarray:
    images = IMAGES.copy()
    images[index] = value
    return images


def _hdr(shape: str, descr: str = "<f4", fortran: str = "False") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"


def data_cases() -> list[Case]:
    """Named mutants (bad dtypes, shapes, values, arrays, pickles, containers, headers) and seeded byte mutants."""
    cases: list[tuple[str, str, dict[str, bytes | Special], str, tuple[int, ...]]] = []

    def add(name: str, label: str, files: dict[str, bytes | Special], data: str = "d.npz",
            allowed: tuple[int, ...] = FAIL) -> None:
        cases.append((name, label, files, data, allowed))

    for dtype in ("float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "bool", "complex64", "complex128", "U3", "S3", "datetime64[s]", "timedelta64[ms]", "V4"):
        array = IMAGES.view(np.uint32).astype(dtype) if dtype[0] in "dtV" else IMAGES.astype(dtype)
        add(f"dtype/{dtype}", f"image as {dtype}", {"d.npz": _npz(image=array)})
    add("dtype/big-endian", "image as >f4", {"d.npz": _npz(image=IMAGES.astype(">f4"))}, allowed=MAYBE)
    add("dtype/structured", "image structured [('a','f4')]",
        {"d.npz": _npz(image=np.zeros((4, 1, 8, 8), [("a", "f4")]))})
    for name, array, allowed in [
        ("rank-minus-one", IMAGES[:, 0], FAIL), ("rank-plus-two", IMAGES[None, None], FAIL),
        ("scalar", np.float32(1.0), FAIL), ("vector", IMAGES.reshape(-1), FAIL),
        ("one-unbatched", IMAGES[0], FAIL), ("channels-2", np.concatenate([IMAGES, IMAGES], 1), FAIL),
        ("height-7", IMAGES[:, :, :7], FAIL), ("width-9", np.pad(IMAGES, ((0, 0), (0, 0), (0, 0), (0, 1))), FAIL),
        ("zero-height", IMAGES[:, :, :0], FAIL), ("zero-samples", IMAGES[:0], FAIL),
        ("stacked-zero", IMAGES[:0, None], FAIL), ("stacked-wrong", IMAGES[:8, None, :, :, :4], FAIL),
        ("stacked-valid", IMAGES[:, None], OK), ("one-sample", IMAGES[:1], MAYBE), ("two-samples", IMAGES[:2], OK),
        ("fortran-order", np.asfortranarray(IMAGES), OK), ("transposed-hw", IMAGES.transpose(0, 1, 3, 2), OK),
    ]:
        add(f"shape/{name}", f"image shape {list(np.shape(array))}", {"d.npz": _npz(image=np.asarray(array))},
            allowed=allowed)
    for name, array, allowed in [
        ("nan", _with(np.nan, 3, 0, 2, 2), FAIL), ("inf", _with(np.inf, 0, 0, 0, 0), FAIL),
        ("minus-inf", _with(-np.inf, 39, 0, 7, 7), FAIL), ("all-nan", np.full_like(IMAGES, np.nan), FAIL),
        ("nan-sample-0", _with(np.nan, 0), FAIL), ("huge-finite", np.full_like(IMAGES, 3e38), MAYBE),
        ("subnormal", np.full_like(IMAGES, 1e-45), OK), ("negative-zero", np.full_like(IMAGES, -0.0), OK),
        ("max-float", np.full_like(IMAGES, np.finfo(np.float32).max), MAYBE),
    ]:
        add(f"values/{name}", f"image values {name}", {"d.npz": _npz(image=array)}, allowed=allowed)
    add("arrays/extra", "image + mask", {"d.npz": _npz(image=IMAGES, mask=IMAGES)})
    add("arrays/missing", "array named pixels", {"d.npz": _npz(pixels=IMAGES)})
    add("arrays/none", "empty npz", {"d.npz": _npz()})
    add("arrays/labels-too", "image + y", {"d.npz": _npz(image=IMAGES, y=np.arange(40))})
    add("arrays/member-no-suffix", "zip member 'image' (no .npy)", {"d.npz": _zip([("image", _npy(IMAGES))])},
        allowed=MAYBE)
    add("arrays/member-dotdot", "zip member '../image.npy'", {"d.npz": _zip([("../image.npy", _npy(IMAGES))])})
    add("arrays/member-subdir", "zip member 'sub/image.npy'", {"d.npz": _zip([("sub/image.npy", _npy(IMAGES))])})
    add("arrays/duplicate-member", "two image.npy members",
        {"d.npz": _zip([("image.npy", _npy(IMAGES)), ("image.npy", _npy(IMAGES[:3, :, :2]))])}, allowed=MAYBE)
    add("arrays/member-npz-inside", "member image.npy is itself an npz",
        {"d.npz": _zip([("image.npy", _npz(image=IMAGES))])})
    for name, files, data in [
        ("object-npz", {"d.npz": "OBJ_NPZ"}, "d.npz"),
        ("object-npy", {"image.npy": "OBJ_NPY"}, "image.npy"),
        ("pickle-named-npz", {"d.npz": "PICKLE"}, "d.npz"),
        ("pickle-named-npy", {"image.npy": "PICKLE"}, "image.npy"),
        ("object-member-header", {"d.npz": "OBJ_MEMBER"}, "d.npz"),
        ("object-in-folder", {"dd/image.npy": "OBJ_NPY"}, "dd"),
    ]:
        add(f"pickle/{name}", f"pickled object data ({name}); must be refused without unpickling", files, data)
    add("container/npy-file", "a valid image.npy", {"image.npy": _npy(IMAGES)}, "image.npy", OK)
    add("container/npy-named-npz", "an .npy named d.npz", {"d.npz": _npy(IMAGES)})
    add("container/npz-named-npy", "an .npz named image.npy", {"image.npy": _npz(image=IMAGES)}, "image.npy")
    add("container/folder-npz", "folder of two npz", {"dd/a.npz": _npz(image=IMAGES[:20]),
                                                     "dd/b.npz": _npz(image=IMAGES[20:])}, "dd", OK)
    add("container/folder-mismatch", "folder npz with different arrays",
        {"dd/a.npz": _npz(image=IMAGES[:20]), "dd/b.npz": _npz(pixels=IMAGES[20:])}, "dd")
    add("container/folder-dtype", "folder npz with different dtypes",
        {"dd/a.npz": _npz(image=IMAGES[:20]), "dd/b.npz": _npz(image=IMAGES[20:].astype(np.float64))}, "dd")
    add("container/folder-concat", "folder npz that do not concatenate",
        {"dd/a.npz": _npz(image=IMAGES[:20]), "dd/b.npz": _npz(image=IMAGES[20:, :, :4])}, "dd")
    add("container/folder-npy", "folder with image.npy", {"dd/image.npy": _npy(IMAGES)}, "dd", OK)
    add("container/folder-npy-extra", "folder with image.npy and mask.npy",
        {"dd/image.npy": _npy(IMAGES), "dd/mask.npy": _npy(IMAGES)}, "dd")
    add("container/folder-mixed", "folder with npz and npy", {"dd/a.npz": _npz(image=IMAGES),
                                                             "dd/image.npy": _npy(IMAGES)}, "dd")
    add("container/folder-empty", "empty folder", {"dd": ("dir", "")}, "dd")
    add("container/folder-subfolder", "folder holding only a folder", {"dd/ee": ("dir", "")}, "dd")
    add("container/missing", "path that does not exist", {}, "nothing.npz")
    add("container/fifo", "d.npz is a FIFO", {"d.npz": ("fifo", "")})
    add("container/fifo-in-folder", "folder whose image.npy is a FIFO", {"dd/image.npy": ("fifo", "")}, "dd")
    add("container/symlink-loop", "d.npz is a symlink to itself", {"d.npz": ("symlink", "d.npz")})
    add("container/symlink-valid", "d.npz links to examples/digits.npz", {"d.npz": ("symlink", str(DIGITS_DATA))},
        allowed=OK)
    add("container/dir-named-npz", "d.npz is an empty folder", {"d.npz": ("dir", "")})
    add("container/dev-null", "the data is /dev/null", {}, "/dev/null")
    add("container/dev-zero", "the data is /dev/zero", {}, "/dev/zero")
    add("container/empty-file", "empty d.npz", {"d.npz": b""})
    for shape in ("(1099511627776, 1, 8, 8)", "(2147483648, 1, 8, 8)", "(4194304, 1, 8, 8)", "(-1, 1, 8, 8)",
                  "(4611686018427387904, 4611686018427387904)", "(40, 1, 8, 1099511627776)"):
        everywhere = shape.startswith(("(1099511627776,", "(2147483648,"))
        for where in ("member", "member-compressed", "npy", "folder-npy") if everywhere else ("member", "npy"):
            npy = _header(_hdr(shape))
            files: dict[str, bytes | Special] = (
                {"d.npz": _zip([("image.npy", npy)], where == "member-compressed")} if where.startswith("member")
                else {"image.npy": npy} if where == "npy" else {"dd/image.npy": npy})
            data = {"npy": "image.npy", "folder-npy": "dd"}.get(where, "d.npz")
            add(f"header/shape{shape.split(',')[0][1:]}x{shape.split(',')[-1].strip(' )')}/{where}",
                f".npy header claims shape {shape} over 1 KB of payload ({where})", files, data)
    for name, npy, allowed in [
        ("unclosed", _header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 8, 8"), FAIL),
        ("descr-f3", _header(_hdr("(4, 1, 8, 8)", "<f3")), FAIL),
        ("descr-object", _header(_hdr("(4, 1, 8, 8)", "|O")), FAIL),
        ("fortran-maybe", _header(_hdr("(4, 1, 8, 8)", fortran="'maybe'")), FAIL),
        ("version-2", _header(_hdr("(4, 1, 8, 8)"), version=(2, 0)), OK),
        ("version-3", _header(_hdr("(4, 1, 8, 8)"), version=(3, 0)), OK),
        ("version-9", _header(_hdr("(4, 1, 8, 8)"), version=(9, 9)), FAIL),
        ("header-60k", _header(_hdr("(4, 1, 8, 8)") + " " * 60000, version=(2, 0)), FAIL),
        ("header-length-lies", _header(_hdr("(4, 1, 8, 8)"), length=65535), FAIL),
        ("payload-short", _header(_hdr("(4, 1, 8, 8)"), IMAGES[:3].tobytes()), FAIL),
        ("payload-long", _header(_hdr("(4, 1, 8, 8)"), IMAGES[:5].tobytes()), MAYBE),
        ("shape-scalar", _header(_hdr("()")), FAIL),
        ("shape-list", _header(_hdr("[4, 1, 8, 8]")), FAIL),
        ("shape-float", _header(_hdr("(4.0, 1, 8, 8)")), FAIL),
        ("header-expression", _header("{'descr': '<f4', 'fortran_order': False, 'shape': (2**40, 1, 8, 8), }"), FAIL),
        ("header-nested", _header("{'descr': [('a', '<f4', (2**20, 2**20))], 'fortran_order': False, "
                                  "'shape': (4,), }"), FAIL),
        ("descr-subarray-huge", _header("{'descr': [('a', '<f4', (1048576, 1048576))], 'fortran_order': False, "
                                        "'shape': (4,), }"), FAIL),
    ]:
        for where in ("member", "npy"):
            files = {"d.npz": _zip([("image.npy", npy)])} if where == "member" else {"image.npy": npy}
            add(f"header/{name}/{where}", f"hand-written .npy header: {name} ({where})", files,
                "d.npz" if where == "member" else "image.npy", allowed)

    out = [Case(f"data/named/{name}", label, files, str(DIGITS), data, allowed)
           for name, label, files, data, allowed in cases]
    stored, compressed = _npz(image=IMAGES), _npz(True, image=IMAGES)
    donors = [stored, compressed, DIGITS.read_bytes()[:2048]]
    for i in range(40):
        rng = np.random.default_rng((SEED, 100, i))
        base = _pick(rng, [stored, compressed])
        content, done = mutate_bytes(rng, base, donors)
        kind = "stored" if base is stored else "compressed"
        out.append(Case(f"data/bytes/{i:03d}", f"seed=({SEED}, 100, {i}) {kind} npz: {done}", {"d.npz": content},
                        str(DIGITS), "d.npz", MAYBE))
    for i in range(15):
        rng = np.random.default_rng((SEED, 101, i))
        array = IMAGES.copy()
        steps = []
        if rng.random() < 0.5:
            index = tuple(int(rng.integers(s)) for s in array.shape)
            value = _pick(rng, [np.nan, np.inf, -np.inf, 1e30, -1e-40])
            array[index] = value
            steps.append(f"image{list(index)} := {value}")
        if rng.random() < 0.5:
            dtype = _pick(rng, ["float32", "float64", "float16", "int64", "uint8", "bool"])
            array = array.astype(dtype)
            steps.append(f"astype {dtype}")
        if rng.random() < 0.5:
            shape = _pick(rng, [(40, 1, 8, 8), (40, 1, 64), (10, 4, 8, 8), (40, 1, 2, 32), (80, 1, 4, 8),
                                (5, 8, 1, 8, 8), (40, 1, 8, 8, 1)])
            array = array.reshape(shape)
            steps.append(f"reshape {list(shape)}")
        out.append(Case(f"data/arrays/{i:03d}", f"seed=({SEED}, 101, {i}) {'; '.join(steps) or 'unchanged'}",
                        {"d.npz": _npz(bool(rng.random() < 0.5), image=array)}, str(DIGITS), "d.npz", MAYBE))
    return out


def _materialise(content: bytes | Special | str, folder: Path) -> bytes | Special:
    """Payloads named in data cases that need the case folder (the pickle traps)."""
    if not isinstance(content, str):
        return content
    trap = str(folder / "UNPICKLED")
    if content == "OBJ_NPZ":
        buffer = io.BytesIO()
        np.savez(buffer, image=_trap_array(trap))
        return buffer.getvalue()
    if content == "OBJ_NPY":
        return _npy(_trap_array(trap), allow_pickle=True)
    if content == "PICKLE":
        return pickle.dumps({"image": _Trap(trap)})
    if content == "OBJ_MEMBER":
        return _zip([("image.npy", _npy(_trap_array(trap), allow_pickle=True))])
    raise AssertionError(content)


def write_case(case: Case, root: Path) -> Case:
    folder = root / case.id.replace("/", "__")
    folder.mkdir(parents=True)
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = _materialise(content, folder)
        if isinstance(content, bytes):
            if name == "m.onnx" and b"ABSOLUTE_CASE_FOLDER" in content:
                model = onnx.load_model_from_string(content)
                for _, tensor in _tensors(model):
                    for entry in tensor.external_data:
                        entry.value = entry.value.replace("ABSOLUTE_CASE_FOLDER", str(folder))
                content = model.SerializeToString()
            path.write_bytes(content)
        elif content[0] == "symlink":
            path.symlink_to(content[1])
        elif content[0] == "dir":
            path.mkdir(exist_ok=True)
        else:
            os.mkfifo(path)
    model = case.model if os.path.isabs(case.model) else str(folder / case.model)
    data = case.data if case.data == "random" or os.path.isabs(case.data) else str(folder / case.data)
    case.folder = str(folder)
    case.argv = ["optimize", model, "--data", data, "-o", str(folder / "out.onnx"), "--threads", "1"]
    case.files = {}
    return case


# --- the worker: runs cases in-process under the guard --------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by SIGALRM in the worker when a case overruns; a ``BaseException`` so no ``except Exception`` in
    graphopt swallows it (``main`` catches only ``GraphoptError`` and ``KeyboardInterrupt``)."""


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout(f"still running after {CASE_TIMEOUT:g} s")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (symlinks not followed): kind, and a digest for regular files."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            rel = str(path.relative_to(folder))
            if stat.S_ISREG(info.st_mode):
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            else:
                entries[rel] = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}.get(
                    stat.S_IFMT(info.st_mode), "other")
    return entries


def _run_case(case: dict[str, Any], err_path: Path) -> dict[str, Any]:
    """One in-process ``main()`` call, stderr captured at fd 2, and every promise checked."""
    import onnxruntime as ort

    from graphopt.cli import main

    folder = Path(case["folder"])
    before = _snapshot(folder)
    started = time.perf_counter()
    escaped = None
    sys.stderr.flush()
    saved_err = os.dup(2)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err_fd, 2)
    faulthandler.dump_traceback_later(CASE_TIMEOUT + 3, exit=True)  # native code that ignores the alarm
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT)
    try:
        with warnings.catch_warnings():  # resets the once-per-location registry: each case warns as a new process
            try:
                code = main(case["argv"], out=io.StringIO())
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - the CLI would print this traceback and exit 1
                escaped = traceback.format_exc()
                code = 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.stderr.flush()
        os.dup2(saved_err, 2)
        os.close(saved_err)
        os.close(err_fd)
    seconds = time.perf_counter() - started
    err = err_path.read_text(errors="replace")
    if escaped:
        err += escaped  # in a real run the traceback is on stderr
    problems = []
    if escaped and "CaseTimeout" in escaped.strip().splitlines()[-1]:
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', escaped)
        where = " <- ".join(f"{Path(f).name}:{n} {fn}" for f, n, fn in frames[::-1][:3])
        problems.append(f"hang: no exit within {CASE_TIMEOUT:g} s, interrupted in {where}")
    lines = err.strip().splitlines()
    if code not in case["allowed"]:
        problems.append(f"exit {code}, expected one of {list(case['allowed'])}")
    if "Traceback" in err:
        problems.append("traceback on stderr")
    after = _snapshot(folder)
    if code != 0:
        if len(lines) != 1 or not lines[0].startswith(PREFIX):
            problems.append(f"stderr is {len(lines)} lines, not one '{PREFIX}' line")
        if after != before:
            changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
            problems.append(f"failed but changed {changed}")
    else:
        expected = {**before}
        for name in ("out.onnx", "out.report.json"):
            if name not in after:
                problems.append(f"success but {name} is missing")
            expected[name] = after.get(name, "")
        if after != expected:
            changed = sorted(k for k in set(after) | set(expected) if after.get(k) != expected.get(k))
            problems.append(f"success but changed {changed}")
        if "out.onnx" in after:
            try:
                onnx.checker.check_model(str(folder / "out.onnx"), full_check=True)
                ort.InferenceSession(str(folder / "out.onnx"), providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001
                problems.append(f"success but the output is invalid: {type(e).__name__}: {str(e)[:200]}")
    return {"id": case["id"], "code": code, "stderr": _clip(err), "last_line": lines[-1][:300] if lines else "",
            "problems": problems, "cause": _cause(err, problems), "seconds": round(seconds, 3)}


def _clip(text: str, limit: int = 6000) -> str:
    return text if len(text) <= limit else f"{text[:limit // 4]}\n[...]\n{text[-limit * 3 // 4:]}"


def _cause(err: str, problems: list[str]) -> str:
    """A root-cause key to group failures by: the escaped exception and the innermost graphopt frame it passed
    through, else the first problem with its numbers blanked."""
    if "Traceback" in err and problems:
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', err)
        ours = [(f, n, fn) for f, n, fn in frames if "/graphopt/" in f or "/passes/" in f]
        where = "{}:{} {}".format(Path(ours[-1][0]).name, *ours[-1][1:]) if ours else "outside graphopt"
        exception = err.strip().splitlines()[-1].split(":")[0].rsplit(".", 1)[-1]
        return f"{exception} escaping from {where}"
    return re.sub(r"\d+", "N", problems[0]) if problems else ""


def _worker(scratch: str) -> None:
    """Read one case (JSON) per stdin line, answer one result (JSON) per stdout line."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    faulthandler.enable()  # a native crash dumps the Python stack to the case's stderr file
    signal.signal(signal.SIGALRM, _alarm)
    results = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from graphopt.cli import main

    warm = Path(scratch) / f"warm{os.getpid()}"
    warm.mkdir()
    main(["optimize", str(DIGITS), "-o", str(warm / "w.onnx"), "--threads", "1"], out=io.StringIO())  # warm-up
    for line in sys.stdin:
        case = json.loads(line)
        result = _run_case(case, Path(scratch) / (case["id"].replace("/", "__") + ".txt"))
        results.write(json.dumps(result) + "\n")
        results.flush()


# --- the parent: dispatch to workers, collect, report ---------------------------------------------------------------


def _start_worker(scratch: Path, log: Path) -> subprocess.Popen[bytes]:
    """A worker whose own stderr (start-up, anything outside a case) goes to ``log``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    with open(log, "ab") as stderr:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(scratch)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                cwd=scratch, env=env, bufsize=0)


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes | None:
    """One result line, or ``None`` when the worker died or missed the deadline."""
    assert proc.stdout is not None
    buffer = b""
    while not buffer.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            return None
        chunk = os.read(proc.stdout.fileno(), 1 << 20)
        if not chunk:
            return None
        buffer += chunk
    return buffer


def run_cases(cases: list[Case], root: Path) -> dict[str, dict[str, Any]]:
    """Write every case under ``root`` and run them on ``WORKERS`` guarded workers; results by case id.

    The workers start first (interpreter, onnxruntime warm-up) while the cases are written."""
    scratch = root / "_stderr"
    scratch.mkdir(parents=True)
    pending: queue.Queue[Case | None] = queue.Queue()
    results: dict[str, dict[str, Any]] = {}

    def slot(index: int) -> None:
        log = scratch / f"worker{index}.log"
        proc: subprocess.Popen[bytes] | None = _start_worker(scratch, log)
        deaths = 0
        while (case := pending.get()) is not None:
            started = time.monotonic()
            if deaths >= 3:  # a worker that cannot even start (graphopt does not import): do not retry forever
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                results[case.id] = {"id": case.id, "code": None, "stderr": "", "last_line": "", "seconds": 0.0,
                                    "problems": [f"not run: three workers in a row died ({tail})"],
                                    "cause": "not run: the workers keep dying"}
                continue
            if proc is None:
                proc = _start_worker(scratch, log)
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps({**asdict(case), "files": {}}).encode() + b"\n")
                line = _read_line(proc, started + CASE_TIMEOUT + 40)  # + a new worker's start-up
            except BrokenPipeError:
                line = None
            if line is not None:
                results[case.id] = json.loads(line)
                deaths = 0
                continue
            deaths += 1
            try:
                proc.wait(timeout=5)  # it closed its pipe: let it finish dying, for a true return code
            except subprocess.TimeoutExpired:
                proc.kill()  # the backstop: the alarm and then faulthandler should have ended it
                proc.wait()
            err_file = scratch / (case.id.replace("/", "__") + ".txt")
            err = err_file.read_text(errors="replace") if err_file.exists() else ""
            if "Timeout (0:00:" in err:
                frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', err)
                where = " <- ".join(f"{Path(f).name}:{n} {fn}" for f, n, fn in frames[:3])
                problem = f"hang in native code: no exit within {CASE_TIMEOUT + 3:g} s (stuck in {where})"
            elif err_file.exists():
                problem = f"the worker died (returncode {proc.returncode}) while running it"
            else:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                problem = f"the worker died (returncode {proc.returncode}) before running it: {tail}; see {log}"
            results[case.id] = {"id": case.id, "code": None, "stderr": _clip(err), "problems": [problem],
                                "cause": problem.split(" (")[0],
                                "last_line": err.strip().splitlines()[-1][:300] if err.strip() else "",
                                "seconds": round(time.monotonic() - started, 3)}
            proc = None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()

    threads = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        for case in cases:
            pending.put(write_case(case, root / "cases"))
    finally:
        for _ in threads:
            pending.put(None)
        for thread in threads:
            thread.join()
    return results


def describe_failures(cases: list[Case], results: dict[str, dict[str, Any]]) -> str:
    """The failing cases of ``results``, grouped by ``_cause``, each with its label and how to replay it."""
    by_id = {c.id: c for c in cases}
    groups: dict[str, list[str]] = {}
    for case_id, result in results.items():
        if not result["problems"]:
            continue
        case = by_id[case_id]
        groups.setdefault(result["cause"], []).append(
            f"  {case_id}: {case.label}\n"
            f"    -> exit {result['code']}: {'; '.join(result['problems'])}; "
            f"last stderr line: {result['last_line']!r}\n"
            f"    replay: GRAPHOPT_FUZZ_ONLY={case_id} pytest tests/test_fuzz_cli.py   or   "
            f"graphopt {' '.join(repr(a) if ' ' in a else a for a in case.argv)}")
    failing = sum(len(v) for v in groups.values())
    parts = [f"{failing} of {len(cases)} mutants broke the CLI's promises, in {len(groups)} groups:"]
    for cause, lines in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        parts.append(f"[{len(lines)}] {cause}")
        parts.extend(lines)
    return "\n".join(parts)


# --- the tests ------------------------------------------------------------------------------------------------------

if __name__ != "__main__":
    import pytest

    @pytest.fixture(scope="module")
    def fuzz(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], dict[str, dict[str, Any]]]:
        root = tmp_path_factory.mktemp("fuzz_cli")
        cases = [*model_cases(), *data_cases()]
        assert len({c.id for c in cases}) == len(cases)
        selected = [c for c in cases if not ONLY or c.id in ONLY]
        assert selected, f"GRAPHOPT_FUZZ_ONLY matches no case: {sorted(ONLY)}"
        results = run_cases(selected, root)
        if os.environ.get("GRAPHOPT_FUZZ_DUMP"):  # every result as JSON, for triage
            Path(os.environ["GRAPHOPT_FUZZ_DUMP"]).write_text(json.dumps(
                [{**results[c.id], "label": c.label, "argv": c.argv} for c in selected], indent=1))
        return selected, results

    def _check(fuzz: tuple[list[Case], dict[str, dict[str, Any]]], prefix: str, minimum: int,
               outcomes: set[int]) -> None:
        cases, results = fuzz
        cases = [c for c in cases if c.id.startswith(prefix)]
        mine = {c.id: results[c.id] for c in cases}
        if ONLY and not cases:
            pytest.skip(f"GRAPHOPT_FUZZ_ONLY selects no {prefix} case")
        if not ONLY:
            assert len(cases) >= minimum, f"only {len(cases)} {prefix} mutants"
        assert len(mine) == len(cases)
        if any(r["problems"] for r in mine.values()):
            pytest.fail(describe_failures(cases, mine), pytrace=False)
        if not ONLY:
            seen = Counter(r["code"] for r in mine.values())
            assert outcomes <= set(seen), f"the fuzz did not reach every outcome {sorted(outcomes)}: {dict(seen)}"

    def test_mutated_models(fuzz: tuple[list[Case], dict[str, dict[str, Any]]]) -> None:
        _check(fuzz, "model/", MODEL_MUTANTS, {0, 3})

    def test_mutated_data(fuzz: tuple[list[Case], dict[str, dict[str, Any]]]) -> None:
        _check(fuzz, "data/", DATA_MUTANTS, {0, 5})


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(sys.argv[2])
