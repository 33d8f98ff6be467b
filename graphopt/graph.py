"""The graph toolkit every pass uses: the bridge to onnx-graphsurgeon for passes that rewire graphs, and the helpers
both substrates (graphsurgeon graphs and raw ``onnx`` protos) share: node labels (``label``), fresh names
(``Names``), walks into ``If``/``Loop``/``Scan`` bodies (``nested_graphs``, ``subgraph_reads``), initializers that
are also graph inputs (``overridable_initializers``), and what a rewrite may touch (``Scope``).

``editing(model)`` hands a pass a mutable ``gs.Graph`` and, on exit, cleans it up, sorts it, exports it and restores
what graphsurgeon does not carry (model metadata, doc strings). Stale intermediate shapes are dropped and inferred
again, because a pass that changes channel counts would otherwise leave wrong ``value_info`` behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias, overload

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper

from graphopt import weights
from graphopt._proto import fits_protobuf, weight_bytes
from graphopt.errors import PreconditionError

__all__ = [
    "AnyGraph",
    "AnyNode",
    "GraphEdit",
    "Names",
    "Scope",
    "constant_array",
    "copy_model",
    "default_opset",
    "densified",
    "editing",
    "free_copies",
    "import_graph",
    "import_node_domains",
    "infer_shapes",
    "initializer_arrays",
    "label",
    "model_digest",
    "nested_graphs",
    "overridable_initializers",
    "sparse_to_dense",
    "subgraph_reads",
    "subgraphs",
]

log = logging.getLogger(__name__)

AnyGraph: TypeAlias = "onnx.GraphProto | gs.Graph"
AnyNode: TypeAlias = "onnx.NodeProto | gs.Node"


@dataclass
class GraphEdit:
    """The graph being edited; ``model`` holds the exported result once the ``editing`` block has exited."""

    graph: gs.Graph
    model: onnx.ModelProto = field(default_factory=onnx.ModelProto)


@contextlib.contextmanager
def editing(model: onnx.ModelProto) -> Iterator[GraphEdit]:
    """Edit ``model`` (left untouched) as a graphsurgeon graph; read the new model from ``edit.model`` afterwards.

    Sparse constants are made dense first: graphsurgeon drops ``Constant(sparse_value)`` nodes and ignores
    ``sparse_initializer``, so a pass after sparse storage would otherwise lose weights. A graph holding values
    graphsurgeon cannot export (optional or map types, in any branch or body) raises ``PreconditionError``.
    """
    unexportable = _unexportable_value(model)
    if unexportable:
        raise PreconditionError(f"graph surgery cannot rewrite this model: {unexportable}")
    edit = GraphEdit(import_graph(copy_model(model)))  # graphsurgeon's export writes into the protos it imported
    yield edit
    edit.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    weights.keep_in_place(edit.graph)
    exported = gs.export_onnx(edit.graph, do_type_check=False)
    for name in ("ir_version", "doc_string", "model_version", "domain", "producer_name", "producer_version"):
        setattr(exported, name, getattr(model, name))
    exported.metadata_props.extend(model.metadata_props)
    exported.graph.doc_string = model.graph.doc_string
    _restore_initializer_inputs(model, exported)
    _restore_output_types(model, exported)
    import_node_domains(exported)
    del exported.graph.value_info[:]
    edit.model = infer_shapes(exported)


_EXPORTABLE_TYPES = frozenset({"tensor_type", "sequence_type", "sparse_tensor_type"})


def _unexportable_value(model: onnx.ModelProto) -> str:
    """The first graph input, output or typed value (of any nested graph) whose type graphsurgeon cannot export,
    as ``"value 'v' is of optional_type"``; empty when there is none."""
    for graph in subgraphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            kind = value.type.WhichOneof("value")
            if kind is not None and kind not in _EXPORTABLE_TYPES:
                return f"value '{value.name}' is of {kind}"
    return ""


def _restore_initializer_inputs(model: onnx.ModelProto, exported: onnx.ModelProto) -> None:
    """Put back the graph inputs that have an initializer (a default the caller may override), which graphsurgeon
    imports as constants and exports as initializers only, so the model keeps its interface; below IR 4, where
    every initializer must be a graph input, new initializers become inputs too. Typed from the initializer."""
    present = {v.name: v for v in exported.graph.input}
    weights = {t.name: t for t in exported.graph.initializer}
    names = [v.name for v in model.graph.input if v.name in present or v.name in weights]
    names += [name for name in present if name not in names]
    if exported.ir_version < 4:
        names += [name for name in weights if name not in names]
    if names == list(present):
        return
    inputs = [present.get(n) or helper.make_tensor_value_info(n, weights[n].data_type, weights[n].dims) for n in names]
    del exported.graph.input[:]
    exported.graph.input.extend(inputs)


def _restore_output_types(model: onnx.ModelProto, exported: onnx.ModelProto) -> None:
    """Give graph outputs that are not tensors (``ZipMap``'s sequence of maps, optionals) their original type back:
    graphsurgeon exports them as sequences of untyped tensors, which fails the full check."""
    original = {v.name: v.type for v in model.graph.output if v.type.WhichOneof("value") != "tensor_type"}
    for value in exported.graph.output:
        if value.name in original:
            value.type.CopyFrom(original[value.name])


def import_node_domains(model: onnx.ModelProto) -> None:
    """Import, at version 1, every operator domain a node uses that ``model`` does not import yet (a pass that
    writes a ``com.microsoft`` kernel into a model that had none): graphsurgeon exports the imports it read."""
    imported = {o.domain for o in model.opset_import} | {"ai.onnx"}
    used = {n.domain for g in subgraphs(model.graph) for n in g.node if n.domain}
    model.opset_import.extend(helper.make_opsetid(domain, 1) for domain in sorted(used - imported))


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes' attributes (``If`` branches, ``Loop``/``Scan`` bodies),
    depth first (``nested_graphs`` without the owners)."""
    yield graph
    yield from (sub for _, sub in nested_graphs(graph))


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as a graphsurgeon graph for analysis, sparse constants made dense (see ``editing``)."""
    return weights.import_in_place(gs.import_onnx(densified(model)))


def sparse_to_dense(sparse: onnx.SparseTensorProto, name: str = "") -> onnx.TensorProto:
    """The dense tensor of an ONNX COO sparse tensor (linear ``[NNZ]`` or coordinate ``[NNZ, rank]`` indices)."""
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(sparse.dims)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape) if indices.size else indices.reshape(-1)
    dense = np.zeros(math.prod(shape), dtype=values.dtype)
    dense[indices] = values
    return numpy_helper.from_array(dense.reshape(shape), name or sparse.values.name)


def densified(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with main-graph sparse constants (``sparse_initializer``, ``Constant(sparse_value)``) as dense
    initializers; ``model`` itself when it has none."""
    sparse_nodes = [n for n in model.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                    and any(a.name == "sparse_value" for a in n.attribute)]
    if not sparse_nodes and not model.graph.sparse_initializer:
        return model
    dense = copy_model(model)
    for sparse in dense.graph.sparse_initializer:
        dense.graph.initializer.append(sparse_to_dense(sparse))
    del dense.graph.sparse_initializer[:]
    kept = []
    for node in dense.graph.node:
        value = next((a for a in node.attribute if a.name == "sparse_value"), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            dense.graph.initializer.append(sparse_to_dense(value.sparse_tensor, node.output[0]))
        else:
            kept.append(node)
    del dense.graph.node[:]
    dense.graph.node.extend(kept)
    return dense


_SHAPE_ONLY = 2**14
"""Values above which an initializer goes to shape inference without its raw data (its type and dims are all
inference reads of a weight; shape tensors and scales are far smaller): onnx infers on a serialised copy of the
model, and on a 54 MB recogniser inference took 0.52 s with the weights, 0.11 s without them. Sizes are read from
the dims: reading ``raw_data`` in Python copies it."""


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference where it can run; the model unchanged where it cannot (too large, unknown ops)."""
    if not fits_protobuf(model):
        return model
    light = copy_model(model)
    stripped = set()
    for tensor in light.graph.initializer:
        if tensor.HasField("raw_data") and math.prod(tensor.dims) > _SHAPE_ONLY:
            stripped.add(tensor.name)
            tensor.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as e:
        log.info("shape inference failed, shapes left as they were: %s", e)
        return model
    originals = {tensor.name: tensor for tensor in model.graph.initializer if tensor.name in stripped}
    for tensor in inferred.graph.initializer:
        if tensor.name in originals:
            tensor.CopyFrom(originals[tensor.name])  # one copy in C, no bytes object in between
    return inferred


def model_digest(model: onnx.ModelProto) -> bytes:
    """A key for caching work on ``model`` (passes are run once per narrowing trial on the same model); empty beyond
    protobuf's 2 GB, where the model cannot be serialised: then nothing is cached."""
    try:
        return hashlib.sha256(model.SerializeToString()).digest()
    except (ValueError, EncodeError):
        return b""


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, for code that must not mutate a model it was handed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


_BIG_MODEL = 2**28
"""Weights from which a model's copies are worth a full garbage collection to free (256 MiB)."""


def free_copies(model: onnx.ModelProto) -> None:
    """Collect the copies of ``model`` that earlier rewrites left behind, and give the memory they and the last
    sessions held back to the system, when it is big. Graphsurgeon graphs are reference cycles whose constants hold
    on to a whole copied model (protobuf keeps the parent of a sub-message alive), so only a full collection frees
    them; for a model of gigabytes, copies pile up faster than Python collects them on its own. And glibc keeps
    what is freed for reuse: after onnxruntime had dropped a 3 GB session's repacked weights, 2.7 GB stayed
    resident (``_return_freed_memory``)."""
    if weight_bytes(model) >= _BIG_MODEL:
        gc.collect()
        _return_freed_memory()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on a C library without it."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere): freed blocks
    below its adaptive mmap threshold (up to 32 MiB, raised by each large block freed) stay resident otherwise."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of ``tensor`` if it is a graph constant (initializer or ``Constant`` output), else ``None``."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def initializer_arrays(model: onnx.ModelProto) -> Iterator[np.ndarray]:
    """Every weight of the main graph: initializers and ``Constant`` node tensors."""
    for tensor in model.graph.initializer:
        yield weights.to_array(tensor)
    for sparse in model.graph.sparse_initializer:
        yield numpy_helper.to_array(sparse_to_dense(sparse))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    yield numpy_helper.to_array(attribute.t)
                elif attribute.name == "sparse_value":
                    yield numpy_helper.to_array(sparse_to_dense(attribute.sparse_tensor))


def label(node: AnyNode) -> str:
    """A node's name for skips, units and notes: its name, else its first output's name, else its op type."""
    if isinstance(node, gs.Node):
        return node.name or (node.outputs[0].name if node.outputs else node.op)
    return node.name or (node.output[0] if node.output else node.op_type)


@overload
def nested_graphs(graph: onnx.GraphProto) -> Iterator[tuple[onnx.NodeProto, onnx.GraphProto]]: ...
@overload
def nested_graphs(graph: gs.Graph) -> Iterator[tuple[gs.Node, gs.Graph]]: ...
def nested_graphs(graph: AnyGraph) -> Iterator[tuple[AnyNode, AnyGraph]]:
    """Every graph nested in ``graph``'s node attributes (``If`` branches, ``Loop``/``Scan`` bodies), at any depth,
    with the node that owns it, depth first; of a proto the protos, of a graphsurgeon graph its graphs."""
    if isinstance(graph, gs.Graph):
        for node in graph.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, gs.Graph):
                        yield node, sub
                        yield from nested_graphs(sub)
        return
    for proto in graph.node:
        for attribute in proto.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield proto, body
                yield from nested_graphs(body)


def subgraph_reads(graph: AnyGraph) -> set[str]:
    """The names nested graphs read (their nodes' inputs and their outputs), among them the outer-scope tensors
    of ``graph`` that a rewrite must neither rename nor remove."""
    reads: set[str] = set()
    for _, sub in nested_graphs(graph):
        if isinstance(sub, gs.Graph):
            reads.update(t.name for n in sub.nodes for t in n.inputs)
            reads.update(t.name for t in sub.outputs)
        else:
            reads.update(name for n in sub.node for name in n.input)
            reads.update(o.name for o in sub.output)
    reads.discard("")
    return reads


def overridable_initializers(graph: onnx.GraphProto) -> list[str]:
    """The initializers that are also graph inputs, sorted: defaults a caller may override at run time, so their
    values are not the model's to rewrite."""
    return sorted({i.name for i in graph.input} & {t.name for t in graph.initializer})


@dataclass
class Names:
    """Every tensor and node name of a graph and its nested graphs, handing out names not yet taken."""

    taken: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph: AnyGraph) -> Names:
        return cls(set(_names(graph)).union(*(_names(sub) for _, sub in nested_graphs(graph))))

    def fresh(self, base: str) -> str:
        """``base`` if no tensor or node has it yet, else ``base_1``, ``base_2``, …; taken from then on."""
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name


def _names(graph: AnyGraph) -> Iterable[str]:
    if isinstance(graph, gs.Graph):
        yield from graph.tensors()
        yield from (n.name for n in graph.nodes if n.name)
        return
    yield from (t.name for t in graph.initializer)
    yield from (s.values.name for s in graph.sparse_initializer)
    yield from (v.name for v in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        yield from (name for name in (*node.input, *node.output, node.name) if name)


@dataclass
class Scope:
    """What a rewrite of a graphsurgeon graph must know about the whole graph: its main nodes and outputs, the
    names nested graphs read (``subgraph_reads``), and every name taken (``Names``)."""

    graph: gs.Graph
    nodes: set[int] = field(default_factory=set)
    outputs: set[int] = field(default_factory=set)
    outer: set[str] = field(default_factory=set)
    names: Names = field(default_factory=Names)

    @classmethod
    def of(cls, graph: gs.Graph) -> Scope:
        return cls(graph, {id(n) for n in graph.nodes}, {id(t) for t in graph.outputs}, subgraph_reads(graph),
                   Names.of(graph))

    def within(self, sub: gs.Graph) -> Scope:
        """The scope of ``sub``, a graph nested in this one (an ``If`` branch): its own nodes and outputs; as names a
        rewrite must neither rename nor remove, those its nested graphs read and those it reads from enclosing
        graphs; and the whole model's names, so that fresh names stay unique everywhere."""
        local = {t.name for node in sub.nodes for t in node.outputs} | {t.name for t in sub.inputs}
        enclosing = {t.name for node in sub.nodes for t in node.inputs
                     if t.name and t.name not in local and not isinstance(t, gs.Constant)}
        return Scope(sub, {id(n) for n in sub.nodes}, {id(t) for t in sub.outputs},
                     subgraph_reads(sub) | enclosing, self.names)

    def fresh(self, base: str) -> str:
        """A tensor or node name not yet used anywhere in the graph or its nested graphs."""
        return self.names.fresh(base)

    def readers_ok(self, tensor: gs.Tensor) -> bool:
        """Whether every reader of ``tensor`` is a visible main-graph node (not a graph output nor a subgraph)."""
        return id(tensor) not in self.outputs and tensor.name not in self.outer
