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
    """A copy of ``model`` whose graph outputs are exactly ``names`` (any tensors of the main graph)."""
    tapped = copy_model(model)
    known = {v.name: v for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    del tapped.graph.output[:]
    for name in names:
        value = onnx.ValueInfoProto()
        if name in known:
            value.CopyFrom(known[name])
        else:
            value.name = name
        tapped.graph.output.append(value)
    return tapped


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
    session = create_session(tap(model, names), config)
    with progress.task(label, data.n_samples) as advance:
        batch_size, start = 1, 0
        while start < data.n_samples:
            feed, count = next(data.batches(batch_size, start=start))
            values = dict(zip(names, session.run(list(names), feed), strict=True))
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
            reduce(batch[name])
        del batch  # the stream drops its batch before the next run; so does this loop
