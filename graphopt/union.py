"""Many variants of one model as a single model: the union of their graphs, each computation they share kept once.

A narrowing search ranks dozens of candidates that each differ from the original model in one unit. Run one by one,
each candidate needs its own session and recomputes everything upstream of its unit; as one model, the nodes the
candidates share (same operator, attributes and inputs; initializers of the same bytes) are computed once, so a
candidate costs only the part of the graph its unit changes, and one session serves them all.

``UnionBuilder.add`` takes the models one at a time (so that only one is held besides the union) and
``UnionBuilder.build`` returns the union and, per variant, which union output holds each of its outputs. Variants
that cannot share one graph raise ``UnionError``: different graph inputs, opsets or functions, subgraph bodies (an
``If``/``Loop`` body reads outer values by name), initializers that are also inputs, external or sparse data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from graphopt._proto import PROTOBUF_LIMIT, raw_bytes, weight_bytes

__all__ = ["ModelUnion", "UnionBuilder", "UnionError"]

_Key = tuple[object, ...]

_PREFIX = "union_"
"""What the union's own value and node names start with."""


class UnionError(Exception):
    """The variants cannot share one graph (the caller runs them one by one instead)."""


@dataclass(frozen=True)
class ModelUnion:
    """The union model, and for each variant the union output that holds each of its outputs."""

    model: onnx.ModelProto
    outputs: Mapping[str, Mapping[str, str]]


class UnionBuilder:
    """Adds variants of one model to a union graph; ``build`` finishes it."""

    def __init__(self, limit: int = PROTOBUF_LIMIT // 2) -> None:
        self._limit = limit
        self._graph = onnx.GraphProto(name="union")
        self._ids: dict[_Key, int] = {}
        self._produced: set[int] = set()  # ids that are node outputs (graph inputs and initializers are not)
        self._types: dict[int, onnx.ValueInfoProto] = {}
        self._outputs: dict[str, dict[str, int]] = {}
        self._header: onnx.ModelProto | None = None
        self._signature: bytes = b""
        self._bytes = 0
        self._input_names: dict[int, str] = {}
        self._by_name: dict[str, tuple[int, onnx.TensorProto]] = {}  # a variant's initializer name -> the union's

    @property
    def variants(self) -> int:
        """How many variants the union holds."""
        return len(self._outputs)

    def add(self, name: str, model: onnx.ModelProto) -> None:
        """Add ``model`` as the variant ``name``; ``UnionError`` when it cannot share the union's graph, and then
        the union is as it was before."""
        if name in self._outputs:
            raise ValueError(f"variant {name!r} added twice")
        if not self._outputs and weight_bytes(model) > self._limit:  # before hashing gigabytes for nothing
            raise UnionError(f"the union's weights would exceed {self._limit} bytes")
        values, nodes, initializers, size = len(self._ids), len(self._graph.node), len(self._graph.initializer), self._bytes
        try:
            self._add(name, model)
        except UnionError:
            for key in list(self._ids)[values:]:
                del self._ids[key]
            self._produced = {i for i in self._produced if i < values}
            self._types = {i: v for i, v in self._types.items() if i < values}
            self._by_name = {n: (i, t) for n, (i, t) in self._by_name.items() if i < values}
            del self._graph.node[nodes:]
            del self._graph.initializer[initializers:]
            self._bytes = size
            if not self._outputs:
                self._header, self._signature, self._input_names = None, b"", {}
                del self._graph.input[:]
            raise

    def _add(self, name: str, model: onnx.ModelProto) -> None:
        self._check_header(model)
        graph = model.graph
        if graph.sparse_initializer:
            raise UnionError("sparse initializers")
        values: dict[str, int] = {"": -1}
        for value in graph.input:
            values[value.name] = self._id(("input", value.name))
        for tensor in graph.initializer:
            if tensor.name in values:
                raise UnionError(f"initializer {tensor.name!r} is also a graph input")
            values[tensor.name] = self._initializer(tensor)
        for node in graph.node:
            self._node(node, values)
        outputs: dict[str, int] = {}
        for value in graph.output:
            if value.name not in values:
                raise UnionError(f"output {value.name!r} is never computed")
            outputs[value.name] = values[value.name]
            self._types.setdefault(values[value.name], value)
        self._outputs[name] = outputs

    def build(self) -> ModelUnion:
        """The union model: the first variant's inputs and header, one output per distinct variant output."""
        if self._header is None:
            raise UnionError("no variants")
        graph = onnx.GraphProto()
        graph.CopyFrom(self._graph)
        names: dict[int, str] = {}
        for ident in sorted({i for outputs in self._outputs.values() for i in outputs.values()}):
            names[ident] = f"{_PREFIX}output_{ident}"
            source = self._name(ident)
            if ident not in self._produced:  # an input or initializer passed straight through
                graph.node.append(onnx.helper.make_node("Identity", [source], [names[ident]], names[ident]))
            else:
                names[ident] = source
            value = onnx.ValueInfoProto()
            value.CopyFrom(self._types[ident])
            value.name = names[ident]
            graph.output.append(value)
        model = onnx.ModelProto()
        model.CopyFrom(self._header)
        model.graph.CopyFrom(graph)
        outputs = {variant: {output: names[i] for output, i in ids.items()} for variant, ids in self._outputs.items()}
        return ModelUnion(model, outputs)

    def _check_header(self, model: onnx.ModelProto) -> None:
        """The first variant sets the inputs, opsets and functions; the others must match them."""
        header = onnx.ModelProto(ir_version=model.ir_version, producer_name="graphopt union")
        header.opset_import.extend(sorted(model.opset_import, key=lambda o: o.domain))
        header.functions.extend(model.functions)
        header.graph.input.extend(model.graph.input)
        signature = header.SerializeToString(deterministic=True)
        if self._header is None:
            self._header, self._signature = header, signature
            for value in model.graph.input:
                if value.name.startswith(_PREFIX):
                    raise UnionError(f"input {value.name!r} starts with the union's own prefix {_PREFIX!r}")
                self._input_names[self._id(("input", value.name))] = value.name
                self._graph.input.append(value)
        elif signature != self._signature:
            raise UnionError("the variants differ in their inputs, opsets or functions")

    def _name(self, ident: int) -> str:
        """A value's name in the union: a graph input keeps its own (the data feeds it by name)."""
        return self._input_names.get(ident) or f"{_PREFIX}{ident}"

    def _id(self, key: _Key) -> int:
        ident = self._ids.get(key)
        if ident is None:
            ident = self._ids[key] = len(self._ids)
        return ident

    def _initializer(self, tensor: onnx.TensorProto) -> int:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnionError(f"initializer {tensor.name!r} is stored outside the model")
        same_name = self._by_name.get(tensor.name)
        if same_name is not None and _same_values(tensor, same_name[1]):  # variants share most weights by name
            return same_name[0]
        unnamed = onnx.TensorProto()
        unnamed.CopyFrom(tensor)
        unnamed.name = ""
        key = ("initializer", hashlib.blake2b(unnamed.SerializeToString(), digest_size=20).digest())
        known = key in self._ids
        ident = self._id(key)
        if not known:
            self._bytes += raw_bytes(tensor) or unnamed.ByteSize()
            if self._bytes > self._limit:
                raise UnionError(f"the union's weights would exceed {self._limit} bytes")
            unnamed.name = self._name(ident)
            self._graph.initializer.append(unnamed)
            self._by_name.setdefault(tensor.name, (ident, self._graph.initializer[-1]))
        return ident

    def _node(self, node: onnx.NodeProto, values: dict[str, int]) -> None:
        attributes = []
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise UnionError(f"{node.op_type} node {node.name!r} has a subgraph")
            attributes.append(attribute.SerializeToString(deterministic=True))
        try:
            inputs = tuple(values[i] for i in node.input)
        except KeyError as e:
            raise UnionError(f"node {node.name!r} reads {e.args[0]!r} before it is computed") from None
        key = ("node", node.domain, node.op_type, node.overload, tuple(attributes), inputs, len(node.output))
        known = key in self._ids
        ident = self._id(key)
        outputs = []
        for index, output in enumerate(node.output):
            if output:
                values[output] = self._id(("output", ident, index))
                self._produced.add(values[output])
            outputs.append(self._name(values[output]) if output else "")
        if not known:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{_PREFIX}node_{ident}"
            del copy.input[:]
            copy.input.extend(self._name(i) if i >= 0 else "" for i in inputs)
            del copy.output[:]
            copy.output.extend(outputs)
            self._graph.node.append(copy)


def _same_values(tensor: onnx.TensorProto, other: onnx.TensorProto) -> bool:
    """Whether two initializers are the same but for their names: compared in C, without the serialising and
    hashing that took 0.3 s per variant of a 90 MB model."""
    if tensor.data_type != other.data_type or tensor.dims != other.dims:
        return False
    probe = onnx.TensorProto()
    probe.CopyFrom(tensor)
    probe.name = other.name
    return probe == other
