"""Block-wise 4-bit weights: MatMul/Gemm weights and Gather embedding tables stored as int4 blocks with float scales.

Each layer's weight W (K×N) is quantised in blocks of ``block`` rows along K (``graphopt_passes._math.block_quant``),
symmetric (int4) or asymmetric (uint4 + zero point), with a per-block clip ratio chosen to minimise the output error
on calibration activations (each row weighted by ``E[x_k²]``), the weight MSE, or plain round to nearest. Two forms:

- ``dq``: standard ONNX, opset 21: ``DequantizeLinear(int4 W, scale, axis, block_size)`` feeding the unchanged
  MatMul, Gemm or Gather. onnxruntime's CPU optimiser fuses DQ→MatMul into ``MatMulNBits`` itself (with
  ``accuracy_level`` 4, int8 activations); a Gemm or Gather behind a DQ dequantises its whole table every run.
- ``nbits``: onnxruntime's contrib ops: ``MatMulNBits`` (Gemm's alpha folded into the weight, its bias an input)
  and ``GatherBlockQuantized`` for embeddings; ``accuracy_level`` 0 computes in float32, 4 in int8.

``form=auto`` picks ``nbits`` for the CPU provider and ``dq`` elsewhere. Measured with onnxruntime 1.32 on a 2-core
AMD EPYC (single thread, batch 1, latency as a ratio to float, ``benchmarks/bench_int4_weights.py``): on
all-MiniLM-L6-v2 the DQ-form MatMuls run as fast as ``MatMulNBits`` at accuracy level 4 (1.12×; that is what the
optimiser makes of them; level 0 1.21×), but a DQ in front of the 30522×384 word-embedding Gather dequantises the
whole table on every call (2.7×), while ``GatherBlockQuantized`` reads only the rows it gathers; on the digits CNN's
Gemms the DQ form is 2.9× (a Gemm is not fused), ``MatMulNBits`` 0.96×. On this CPU int4 saves file size and
memory, not time: float sgemm beats the int4 kernels on MiniLM's full-sequence MatMuls. Layers are units, ranked
by relative layer-output error on the calibration samples (an embedding's weighted by how often each row was
gathered), so verified narrowing keeps in float those that break the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.activations import reduce_activations
from graphopt.errors import PassError
from graphopt.graph import (
    Names,
    copy_model,
    free_copies,
    import_node_domains,
    label,
    overridable_initializers,
    subgraph_reads,
)
from graphopt.opset import ensure_opset
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, PlanCache, Skip, Unit
from graphopt.weights import to_array
from graphopt_passes._math import block_quant as bq
from graphopt_passes._math.low_rank import Gram, accumulate_gram, budget_groups, gram_budget

__all__ = ["Int4WeightsPass"]

log = logging.getLogger(__name__)

_MS = "com.microsoft"


@dataclass(frozen=True)
class _Layer:
    """A weight seen as X·W with W (K×N): ``kn`` is False when the initializer holds Wᵀ (Gemm transB, Gather)."""

    node: str
    op: str
    weight: str
    source: str
    stored: onnx.TensorProto
    shape: tuple[int, int]
    """W's (K, N)."""
    kn: bool
    nbits: bool = True

    def matrix(self, columns: slice = slice(None)) -> np.ndarray:
        """W's ``columns`` (K×n) in float64, read when needed (a weight kept in place is mapped only then)."""
        weight = to_array(self.stored)
        return np.asarray(weight[:, columns] if self.kn else weight[columns].T, dtype=np.float64)


@dataclass(frozen=True)
class _Plan:
    layer: _Layer
    quant: bq.BlockQuant
    """The layer's int4 grid, its scales in float32 as the model stores them (a plan is held for every layer)."""
    error: float
    rtn_error: float


class Int4WeightsPass(PassBase):
    """Store MatMul/Gemm/Gather weights as block-wise int4 with scales searched on calibration data."""

    name = "int4-weights"
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        block: int = field(default=32, metadata={"help": "rows of K per scale: a power of two >= 16"})
        symmetric: bool = field(default=True, metadata={"help": "int4 with zero point 0; false: uint4 + zero point"})
        search: Literal["data", "weight", "none"] = field(
            default="data", metadata={"help": "clip-ratio search per block: output error on calibration data (data), "
                                      "weight MSE (weight), or plain round to nearest (none)"})
        form: Literal["auto", "dq", "nbits"] = field(
            default="auto", metadata={"help": "dq: DequantizeLinear int4 blocks (opset 21); nbits: onnxruntime's "
                                      "MatMulNBits/GatherBlockQuantized; auto: nbits on CPU, dq elsewhere"})
        accuracy_level: int = field(default=4, metadata={"help": "MatMulNBits compute: 0 float32, 4 int8"})
        embeddings: bool = field(default=True, metadata={"help": "quantise Gather embedding tables too"})
        min_size: int = field(default=4096, metadata={"help": "skip weights with fewer elements"})

        def __post_init__(self) -> None:
            if self.block < 16 or self.block & (self.block - 1):
                raise ValueError(f"block must be a power of two >= 16, got {self.block}")
            if self.accuracy_level not in (0, 1, 2, 3, 4) or self.min_size < 0:
                raise ValueError("need accuracy_level in 0..4 and min_size >= 0")

    def __init__(self, options: Int4WeightsPass.Options | None = None) -> None:
        super().__init__(options)
        self._plans: PlanCache[tuple[list[_Plan], list[Skip]]] = PlanCache()

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[Int4WeightsPass, ...]:
        """Size only: on this CPU int4 saves size, not time."""
        return (cls(),) if goal == "size" else ()

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer; its sensitivity is the relative layer-output error of its int4 weight."""
        return tuple(Unit(p.layer.node, p.error, _detail(p), gain=p.layer.shape[0] * p.layer.shape[1] * (3.5 - 4 / p.quant.block))
                     for p in self._plan(model, context)[0])

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        plans, skipped = self._plan(model, context)
        chosen = [p for p in plans if context.selects(p.layer.node)]
        empty = {"layers_quantized": 0, "bytes_before": 0, "bytes_after": 0}
        if not chosen:
            return PassResult(copy_model(model), False, empty, tuple(skipped))
        form = self._form(context)
        try:
            upgrade = form == "dq" or not all(p.layer.nbits for p in chosen)
            out, note = ensure_opset(model, 21) if upgrade else (copy_model(model), "")
            out = copy_model(out) if out is model else out
            stats = dict(empty)
            for p in chosen:
                before, after = _rewrite(out, p, form, self.options.accuracy_level)
                stats["bytes_before"] += before
                stats["bytes_after"] += after
            stats["layers_quantized"] = len(chosen)
            _finish(out, form)
        except PassError as e:  # the opset cannot be raised: a refusal with its reason (bugs reach the manager)
            return PassResult(copy_model(model), False, empty, (*skipped, Skip("graph", str(e))))
        notes = ([note] if note else []) + [f"{_detail(p)} as {form}" for p in chosen]
        log.info("%s: %s", self.name, stats)
        return PassResult(out, True, stats, tuple(skipped), tuple(notes))

    def _form(self, context: PassContext) -> str:
        if self.options.form != "auto":
            return self.options.form
        providers = context.runtime.providers or ("CPUExecutionProvider",)
        return "nbits" if providers[0] == "CPUExecutionProvider" else "dq"

    def _plan(self, model: onnx.ModelProto, context: PassContext) -> tuple[list[_Plan], list[Skip]]:
        """The quantised layers and refusals, cached by model digest: narrowing calls ``run`` once per trial."""
        return self._plans.get(model, context, lambda: _make_plan(model, context, self.options))


def _make_plan(model: onnx.ModelProto, context: PassContext, options: Int4WeightsPass.Options
               ) -> tuple[list[_Plan], list[Skip]]:
    layers, skipped = _find(model, options)
    calibrated = context.calibration is not None and context.calibration.n_samples > 0
    plans = []
    budget = gram_budget(sum(4 * layer.shape[0] * layer.shape[1] for layer in layers))
    for group in budget_groups(layers, _gram_bytes, budget):  # one calibration run each, dropped before the next
        counts: dict[str, np.ndarray] = {}
        grams = _calibrate(model, group, context, counts) if calibrated else {}
        free_copies(model)  # what the calibration session and its batches held, before planning takes more
        for layer in group:
            gram = grams.get(layer.source)
            usable = gram is not None and layer.op != "Gather" and gram.matrix.shape[0] == layer.shape[0]
            if layer.op != "Gather" and options.search == "data" and not usable:
                skipped.append(Skip(layer.node, f"no activations of '{layer.source}'"))
                continue
            g = gram.matrix / max(gram.count, 1) if usable and gram is not None else None
            plans.append(_plan_layer(layer, g, counts.get(layer.source), options))
    return plans, skipped


def _gram_bytes(layer: _Layer) -> dict[str, int]:
    """The float64 Gram of a MatMul/Gemm's input, K² values (an embedding's row counts are small)."""
    return {} if layer.op == "Gather" else {layer.source: 8 * layer.shape[0] ** 2}


_CHUNK = 2**22
"""Values of a weight quantised at a time: the search's float64 temporaries take several times their input, and
GPT-2's 1280×50257 output projection taken whole needed 2.5 GB of them. Columns are independent, so chunks give the
same grid."""


def _plan_layer(layer: _Layer, gram: np.ndarray | None, counts: np.ndarray | None,
                options: Int4WeightsPass.Options) -> _Plan:
    """The layer's int4 grid (searched, or rounded to nearest), a few columns at a time, with its relative output
    error and that of plain rounding."""
    k, n = layer.shape
    step = max(1, _CHUNK // k)
    importance = np.diag(gram) if options.search == "data" and gram is not None else None
    parts, terms = [], np.zeros((2, 2))
    observed = counts is not None and counts[:n].any()
    for start in range(0, n, step):
        columns = slice(start, min(n, start + step))
        matrix = layer.matrix(columns)
        rtn = bq.quantize(matrix, options.block, options.symmetric)
        quant = rtn if options.search == "none" else bq.search(matrix, options.block, options.symmetric,
                                                                importance)[0]
        weights = counts[columns].astype(np.float64) if observed and counts is not None else None
        terms += [_error_terms(matrix, q, gram, weights) for q in (quant, rtn)]
        parts.append(replace(quant, scales=quant.scales.astype(np.float32)))
    return _Plan(layer, bq.concatenate(parts), bq.relative(*terms[0]), bq.relative(*terms[1]))


def _error_terms(matrix: np.ndarray, quant: bq.BlockQuant, gram: np.ndarray | None,
                 weights: np.ndarray | None) -> tuple[float, float]:
    """The squared layer-output error on the calibration samples and the squared output it is relative to: from
    the input Gram for a MatMul/Gemm, from how often each row was gathered (``weights``) for an embedding, the
    weight's own where neither was observed."""
    approx = bq.dequantize(quant)
    if gram is not None:
        return bq.output_error_terms(matrix, approx, gram)
    weights = np.ones(matrix.shape[1]) if weights is None else weights
    return float(weights @ np.sum((matrix - approx) ** 2, axis=0)), float(weights @ np.sum(matrix**2, axis=0))


def _find(model: onnx.ModelProto, options: Int4WeightsPass.Options) -> tuple[list[_Layer], list[Skip]]:
    """Candidate layers of the main graph, and a ``Skip`` with the reason for every MatMul/Gemm/Gather that is not."""
    graph = model.graph
    arrays = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    inner = subgraph_reads(graph)
    overridable = set(overridable_initializers(graph))
    layers, skipped = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Gather") or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gather" and not options.embeddings:
            continue
        unit = label(node)
        at = 0 if node.op_type == "Gather" else 1
        if len(node.input) < 2 or node.input[at] not in arrays:
            if node.op_type != "Gather" and node.input[0] in arrays:
                skipped.append(Skip(unit, "the weight is the first input (W·X): only X·W has a blocked int4 form"))
            elif node.op_type != "Gather":
                skipped.append(Skip(unit, "no constant weight initializer"))
            continue
        name, attrs = node.input[at], {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = to_array(arrays[name])
        k = (weight.shape[::-1] if node.op_type == "Gather" or attrs.get("transB", 0) else weight.shape)[0] \
            if weight.ndim == 2 else 0
        why = (f"weight is {weight.ndim}-D, not a matrix" if weight.ndim != 2
               else f"weight dtype {weight.dtype} is not float32" if weight.dtype != np.float32
               else "Gemm with transA=1" if attrs.get("transA", 0)
               else f"Gather on axis {attrs['axis']}, not the table's rows" if attrs.get("axis", 0) not in (0, -2)
               else f"weight '{name}' shared by {readers[name]} nodes" if readers[name] > 1
               else f"weight '{name}' is read inside a subgraph" if name in inner
               else f"weight '{name}' is also a graph input (overridable)" if name in overridable
               else f"{weight.shape[0]}×{weight.shape[1]} = {weight.size} weights < min_size {options.min_size}"
               if weight.size < options.min_size
               else f"K={k} is not a multiple of block {options.block}" if k % options.block else "")
        if why:
            skipped.append(Skip(unit, why))
            continue
        kn = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0))
        shape = weight.shape if kn else weight.shape[::-1]
        layers.append(_Layer(unit, node.op_type, name, node.input[1 - at], arrays[name], (shape[0], shape[1]), kn,
                             node.op_type != "Gemm" or _nbits_gemm(graph, node)))
    return layers, skipped


def _calibrate(model: onnx.ModelProto, layers: list[_Layer], context: PassContext, counts: dict[str, np.ndarray]
               ) -> dict[str, Gram]:
    """The Gram matrix XᵀX of each MatMul/Gemm input over its last axis, and how often each embedding row was
    gathered (into ``counts``), streamed (``CalibrationError`` when onnxruntime cannot run the model)."""
    assert context.calibration is not None
    grams: dict[str, Gram] = {}
    rows = {layer.source: layer.shape[1] for layer in layers if layer.op == "Gather"}

    def observe(source: str) -> Callable[[np.ndarray], None]:
        def update(x: np.ndarray) -> None:
            if source in rows:
                index = np.asarray(x, dtype=np.int64).reshape(-1) % rows[source]  # negative indices count back
                counts[source] = counts.get(source, 0) + np.bincount(index, minlength=rows[source])
            else:
                grams[source] = accumulate_gram(grams.get(source), x, -1)
        return update

    sources = {layer.source for layer in layers}
    reduce_activations(model, {s: observe(s) for s in sorted(sources)}, context.calibration, context.runtime,
                       progress=context.progress, label="int4-weights calibration")
    return grams


def _int4(name: str, values: np.ndarray, signed: bool) -> onnx.TensorProto:
    kind = onnx.TensorProto.INT4 if signed else onnx.TensorProto.UINT4
    return helper.make_tensor(name, kind, list(values.shape), bq.pack_int4(values).tobytes(), raw=True)


def _rewrite(model: onnx.ModelProto, plan: _Plan, form: str, accuracy_level: int) -> tuple[int, int]:
    """Replace the layer's float weight in ``model`` (edited in place) by its int4 form; bytes before and after."""
    graph, layer, q = model.graph, plan.layer, plan.quant
    index = next(i for i, n in enumerate(graph.node) if label(n) == layer.node)
    node = graph.node[index]
    fresh = Names.of(graph).fresh

    weight = next(t for t in graph.initializer if t.name == layer.weight)
    before = 4 * int(np.prod(weight.dims))
    graph.initializer.remove(weight)
    base = fresh(f"{layer.weight}_int4")
    names = {"q": base, "s": fresh(f"{base}_scale"), "z": fresh(f"{base}_zero_point")}
    if form == "dq" or not layer.nbits:
        values, scales, zeros = (q.values, q.scales, q.zero_points) if layer.kn else \
            (q.values.T, q.scales.T, q.zero_points.T)
        tensors = [_int4(names["q"], values, q.symmetric), numpy_helper.from_array(scales.astype(np.float32), names["s"])]
        tensors += [] if q.symmetric else [_int4(names["z"], zeros, False)]
        dq = helper.make_node("DequantizeLinear", [t.name for t in tensors], [layer.weight],
                              name=fresh(f"{layer.node}_dequantize"), axis=0 if layer.kn else 1, block_size=q.block)
        graph.node.insert(index, dq)
    elif layer.op == "Gather":
        tensors = [_int4(names["q"], q.values.T, q.symmetric), numpy_helper.from_array(q.scales.T.astype(np.float32),
                                                                                       names["s"])]
        tensors += [] if q.symmetric else [_int4(names["z"], q.zero_points.T, False)]
        new = helper.make_node("GatherBlockQuantized", [names["q"], node.input[1], *(t.name for t in tensors[1:])],
                               list(node.output), name=node.name, domain=_MS, bits=4, block_size=q.block,
                               quantize_axis=1, gather_axis=0)
        graph.node.remove(node)
        graph.node.insert(index, new)
    else:
        tensors = _nbits(graph, node, plan, names, accuracy_level, index)
    graph.initializer.extend(tensors)
    return before, sum(len(t.raw_data) or 4 * len(t.float_data) for t in tensors)


def _nbits_gemm(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Whether a Gemm fits ``MatMulNBits``: beta·C must be a constant vector of N (or absent)."""
    if len(node.input) < 3 or not node.input[2]:
        return True
    bias = next((t for t in graph.initializer if t.name == node.input[2]), None)
    return bias is not None and len([d for d in bias.dims if d != 1]) <= 1


def _nbits(graph: onnx.GraphProto, node: onnx.NodeProto, plan: _Plan, names: dict[str, str], accuracy_level: int,
           index: int) -> list[onnx.TensorProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    q, (k, n) = plan.quant, plan.layer.shape
    alpha = float(attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    b, scales, zeros = bq.pack_nbits(q)
    tensors = [numpy_helper.from_array(b, names["q"]), numpy_helper.from_array((scales * alpha).astype(np.float32),
                                                                                names["s"])]
    inputs = [node.input[0], names["q"], names["s"], ""]
    if zeros is not None:
        tensors.append(numpy_helper.from_array(zeros, names["z"]))
        inputs[3] = names["z"]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        bias = next(t for t in graph.initializer if t.name == node.input[2])
        values = np.broadcast_to(to_array(bias).reshape(-1), (n,)) * float(attrs.get("beta", 1.0))
        tensors.append(numpy_helper.from_array(values.astype(np.float32), f"{names['q']}_bias"))
        inputs += ["", tensors[-1].name]
    while inputs[-1] == "":
        inputs.pop()
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=_MS, K=k, N=n, bits=4,
                           block_size=q.block, accuracy_level=accuracy_level)
    graph.node.remove(node)
    graph.node.insert(index, new)
    return tensors


def _finish(model: onnx.ModelProto, form: str) -> None:
    """Drop initializers nothing reads any more (a Gemm's folded bias), import com.microsoft (``import_node_domains``),
    need IR 10 (int4)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for position in reversed(range(len(model.graph.initializer))):  # in place: re-adding the kept ones copies them
        if model.graph.initializer[position].name not in used:
            del model.graph.initializer[position]
    import_node_domains(model)
    model.ir_version = max(model.ir_version, 10)


def _detail(p: _Plan) -> str:
    k, n = p.layer.shape
    kind = "int4" if p.quant.symmetric else "uint4"
    return (f"{p.layer.node}: {k}×{n} {kind} block {p.quant.block}, output error {p.rtn_error:.2e} rounded → "
            f"{p.error:.2e} searched")
