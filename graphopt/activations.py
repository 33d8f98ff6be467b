"""Intermediate activations for data-aware passes, streamed batch by batch so memory stays bounded.

``stream_activations`` exposes the requested tensors as extra graph outputs of a copy of the model and yields them
one batch at a time; callers reduce each batch at once (running statistics, Gram matrices) instead of keeping all
activations. The model's own outputs are not fetched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from graphopt.data import Dataset
from graphopt.errors import CalibrationError, first_line
from graphopt.graph import copy_model
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import RuntimeConfig, create_session

__all__ = ["MAX_BATCH_BYTES", "reduce_activations", "stream_activations", "tap"]

MAX_BATCH_BYTES = 64 << 20
"""The most the tapped tensors of one calibration batch may take: a transformer's or a byte model's activations can
take megabytes per sample, and 64 samples of them hundreds of MB that onnxruntime's arena then keeps."""


def tap(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names``: tensors of the main graph, or of an ``If``
    branch at any depth, threaded out through each enclosing ``If`` as an extra output (the other branch gives an
    empty tensor: a batch that did not take the branch yields an empty array)."""
    tapped = copy_model(model)
    known = {v.name: v for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    produced = {out for node in tapped.graph.node for out in node.output} | {v.name for v in tapped.graph.input} | {
        t.name for t in tapped.graph.initializer}
    del tapped.graph.output[:]
    for name in names:
        value = onnx.ValueInfoProto()
        outer = name if name in produced else _thread_out(tapped.graph, name)
        if outer == name and name in known:
            value.CopyFrom(known[name])
        else:
            value.name = outer or name  # a name found nowhere: onnxruntime says so when the session is made
        tapped.graph.output.append(value)
    return tapped


def _thread_out(graph: onnx.GraphProto, name: str) -> str | None:
    """The name of a new output of an ``If`` node of ``graph`` that carries ``name``, a tensor made inside one of
    its branches (at any depth), or ``None`` when no ``If`` branch makes it."""
    for node in graph.node:
        if node.op_type != "If":
            continue
        branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
        for side, branch in branches.items():
            made = {out for n in branch.node for out in n.output}
            inner = name if name in made else _thread_out(branch, name)
            if inner is None:
                continue
            elem = _elem_type(branch, inner)
            copy = f"{inner}__out"  # a copy: a branch output listed twice comes back as None
            branch.node.append(onnx.helper.make_node("Identity", [inner], [copy]))
            branch.output.append(onnx.helper.make_tensor_value_info(copy, elem, None))
            other = branches["else_branch" if side == "then_branch" else "then_branch"]
            empty = f"{inner}__untaken"
            other.node.append(onnx.helper.make_node("Constant", [], [empty], value=onnx.helper.make_tensor(
                empty, elem, [0], [])))
            other.output.append(onnx.helper.make_tensor_value_info(empty, elem, None))
            threaded = f"{inner}__tapped"
            node.output.append(threaded)
            return threaded
    return None


def _elem_type(graph: onnx.GraphProto, name: str) -> int:
    """The element type of ``name`` in ``graph`` where shape inference recorded it, else float32."""
    for value in (*graph.value_info, *graph.output):
        if value.name == name and value.type.HasField("tensor_type"):
            return value.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def stream_activations(
    model: onnx.ModelProto,
    names: Sequence[str],
    data: Dataset,
    runtime: RuntimeConfig | None = None,
    *,
    progress: Progress = NULL_PROGRESS,
    label: str = "calibration",
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: activation}`` per batch of ``data`` (axis 0 = the batch's samples where batchable).

    Graph optimisations are limited to ``basic`` so that tapped tensors keep their float meaning. Memory does not
    grow with the samples: the first sample runs alone and measures what the tapped tensors of one sample take,
    and the rest run in batches of at most ``max_batch_bytes`` of them (and at most ``runtime.batch_size``
    samples); a batch is dropped before the next one runs, so a reducer must keep what it needs (running sums).
    """
    runtime = runtime or RuntimeConfig()
    config = RuntimeConfig(runtime.providers, runtime.intra_op_threads, "basic", runtime.batch_size)
    tapped = tap(model, names)
    fetch = [o.name for o in tapped.graph.output]  # a branch's tensor under the name its If gives it
    session = create_session(tapped, config)
    with progress.task(label, data.n_samples) as advance:
        batch_size, start = 1, 0
        while start < data.n_samples:
            feed, count = next(data.batches(batch_size, start=start))
            values = dict(zip(names, session.run(fetch, feed), strict=True))
            if start == 0:
                per_sample = sum(v.nbytes for v in values.values())
                batch_size = max(1, min(config.batch_size, max_batch_bytes // max(per_sample, 1)))
            yield values
            del values  # before the next run: two batches alive would double the peak
            start += count
            advance(count)


def reduce_activations(
    model: onnx.ModelProto,
    reducers: Mapping[str, Callable[[np.ndarray], None]],
    data: Dataset,
    runtime: RuntimeConfig | None = None,
    *,
    progress: Progress = NULL_PROGRESS,
    label: str = "calibration",
) -> None:
    """Stream ``data`` and hand each batch of tensor ``name`` to ``reducers[name]`` at once (running statistics).

    ``CalibrationError`` (one line: ``label``, the error's type and message) when onnxruntime cannot build or run
    the tapped model, so that the manager reports the pass as skipped with it; what a reducer raises is the pass's
    own error and propagates. Nothing to reduce runs nothing.
    """
    if not reducers:
        return
    batches = stream_activations(model, sorted(reducers), data, runtime, progress=progress, label=label)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # onnxruntime's errors (Fail, InvalidArgument, …) share no base but Exception
            raise CalibrationError(f"{label} failed: {type(e).__name__}: {first_line(e)}") from e
        if batch is None:
            return
        for name, reduce in reducers.items():
            if batch[name].size:  # empty: the batch did not take the If branch that makes it
                reduce(batch[name])
        del batch  # the stream drops its batch before the next run; so does this loop
