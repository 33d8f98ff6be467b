"""One small wrapper around onnxruntime: sessions as deployed, and whole-dataset runs.

Sessions use the CPU execution provider and onnxruntime's default graph optimisations unless configured otherwise,
because a rewrite must be judged the way users run it (fused kernels can round differently from the unfused graph).
One exception: when onnxruntime's constant folding would hold more than ``FOLDING_LIMIT`` bytes at load, and more than
the model's weights (a large clustered model), graphopt's sessions leave that folding to run time (same kernels, same
outputs), so that verifying a 3 GB model does not take 16 GB.

An output whose shape depends on the sample (``NonZero``, ``Unique``, ``Compress``, ``NonMaxSuppression``, ``TopK``
with a data-dependent k…) cannot be stacked into one array: it comes back as a ``RaggedOutput``, one array per
sample, and ``graphopt.verify.metrics`` compares it sample by sample. Asked to (``spill_bytes``), a run writes an
output larger than that to a temporary file as it comes (``graphopt.columns.SpillFile``), so that holding the
outputs of many samples costs disk and page cache, not memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from graphopt import weights
from graphopt._proto import fits_protobuf, raw_bytes, save_model_file, weight_bytes
from graphopt.columns import Rows, SpillFile
from graphopt.errors import UnsupportedModelError, UsageError, first_line
from graphopt.graph import infer_shapes
from graphopt.outputs import Output, Outputs, RaggedOutput, stack_samples
from graphopt.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from graphopt.data import Dataset

__all__ = [
    "GRAPH_OPTIMIZATION_LEVELS",
    "ORT_ERRORS",
    "Output",
    "Outputs",
    "RaggedOutput",
    "RuntimeConfig",
    "Session",
    "check_providers",
    "create_session",
    "folded_bytes",
    "run_dataset",
    "stack_samples",
]

log = logging.getLogger(__name__)


class Session(Protocol):
    """What ``run_dataset`` calls of a loaded model: an ``onnxruntime.InferenceSession``, or another runtime's
    model behind the same two calls (``graphopt.openvino.CompiledSession``)."""

    def get_outputs(self) -> Sequence[Any]:
        """The graph outputs, each with a ``name``."""

    def run(self, output_names: Sequence[str], input_feed: Mapping[str, Any]) -> Sequence[Any]:
        """The outputs named, in that order, for one feed."""


GRAPH_OPTIMIZATION_LEVELS: Mapping[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


ORT_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, *(
    error for error in vars(ort.capi.onnxruntime_pybind11_state).values()
    if isinstance(error, type) and issubclass(error, Exception)))
"""What onnxruntime raises for a model it cannot load or run: its own status classes (``Fail``, ``InvalidGraph``,
``NotImplemented``, ``EPFail``…, none a ``RuntimeError``) and the Python errors of its bindings."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How onnxruntime runs models: execution providers, intra-op threads (0 = onnxruntime's choice), graph
    optimisation level (``disable``, ``basic``, ``extended``, ``all``) and the batch size for dynamic-batch runs.

    The batch size is small because on a CPU larger batches are slower per sample once a sample's activations
    outgrow the caches, and onnxruntime's arena keeps the largest batch's activations for the session's life: from
    64 to 8 samples, PP-OCRv4 det ran 1.9× faster per sample on this project's machines, its text recogniser 1.35×,
    magika 1.17×, a MiniLM 1.11×, small CNNs alike (AVX-512 kind), and det's peak memory fell from 2.2 to 1.0 GB.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION_LEVELS)}")
        if self.batch_size < 1 or self.intra_op_threads < 0:
            raise ValueError("batch_size must be >= 1 and intra_op_threads >= 0")


def create_session(model: onnx.ModelProto | Path, config: RuntimeConfig | None = None) -> ort.InferenceSession:
    """An onnxruntime session for ``model``; raises ``UnsupportedModelError`` (one line) if onnxruntime refuses it.

    A model with weights kept in their files (``graphopt.weights``) is loaded from a temporary file beside them
    (``_beside_weights``), so that onnxruntime maps them instead of copying them. Models too large for one protobuf
    message are written to a temporary folder with external data first.
    """
    config = config or RuntimeConfig()
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[config.graph_optimization]
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach the user once, as the exception graphopt reports
    printed = io.StringIO()
    disabled = _folding_too_big(model)
    try:
        with contextlib.redirect_stdout(printed):  # its "EP Error … Falling back" banner must not reach stdout
            session = _open_session(model, options, list(config.providers), disabled)
    except ORT_ERRORS as e:
        raise UnsupportedModelError(f"onnxruntime cannot load the model: {first_line(e)}") from e
    wanted, used = config.providers[0], session.get_providers()
    if wanted not in used:
        lines = [line.strip() for line in printed.getvalue().splitlines()]
        reason = next((line for line in lines if line and not line.startswith("*")), "no reason given")
        raise UnsupportedModelError(f"onnxruntime fell back from {wanted} to {used[0]}: {reason[:300]}")
    return session


def _open_session(model: onnx.ModelProto | Path, options: ort.SessionOptions, providers: list[str],
                  disabled: Sequence[str] = ()) -> ort.InferenceSession:
    def load(source: str | bytes) -> ort.InferenceSession:
        return ort.InferenceSession(source, options, providers=providers, disabled_optimizers=list(disabled))

    if isinstance(model, Path):
        return load(str(model))
    if fits_protobuf(model) and weights.in_place(model):
        with _beside_weights(model) as path:
            if path is not None:
                return load(str(path))
        names, maps = weights.external_initializers(model)  # a read-only folder: onnxruntime copies the weights
        values = [ort.OrtValue.ortvalue_from_numpy(m) for m in maps]
        options.add_external_initializers(names, values)
        session = load(model.SerializeToString())
        session._graphopt_weights = (maps, values)  # type: ignore[attr-defined]  # they must outlive the session
        return session
    if fits_protobuf(model):
        return load(model.SerializeToString())
    with tempfile.TemporaryDirectory(prefix="graphopt-session-") as folder:
        path = Path(folder) / "model.onnx"
        save_model_file(model, path, external=True)
        return load(str(path))


FOLDING_LIMIT = 1 << 30
"""Bytes of constant-folded values above which graphopt's own sessions leave the folding to run time, when they are
also more than the model's weights (``_folding_too_big``)."""
_FOLDING_SCAN = FOLDING_LIMIT // 32  # constant-only nodes reading fewer bytes than this are not sized


def folded_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the values onnxruntime's constant folding computes when it loads ``model``: the outputs of the main
    graph's nodes that read initializers (not graph inputs) and other such values alone, sized by shape inference
    (an output of unknown shape counts 0). onnxruntime holds every one of them until folding ends
    (microsoft/onnxruntime#28203), so a clustered weight's unpacking chain (``Cast → Mod/Div → Concat → Reshape →
    Gather``) costs about 18 bytes per weight value at load."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    folded: list[str] = []
    read = 0
    sizes = {t.name: raw_bytes(t) or 0 for t in graph.initializer}
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if (node.op_type == "Constant" or not inputs or not all(i in constants for i in inputs)
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            continue
        constants.update(node.output)
        folded += list(node.output)
        read += sum(sizes.get(i, 0) for i in inputs)
    if not folded or read < _FOLDING_SCAN:
        return 0
    shapes = {v.name: v.type.tensor_type for v in infer_shapes(model).graph.value_info}
    total = 0
    for name in folded:
        kind = shapes.get(name)
        if kind is not None and kind.HasField("shape") and all(d.HasField("dim_value") for d in kind.shape.dim):
            sized = onnx.TensorProto(data_type=kind.elem_type, dims=[d.dim_value for d in kind.shape.dim])
            total += raw_bytes(sized) or 0
    return total


def _folding_too_big(model: onnx.ModelProto | Path) -> list[str]:
    """``["ConstantFolding"]`` when onnxruntime's folding of ``model`` would hold more than ``FOLDING_LIMIT`` bytes
    and more than the model's weights (a large clustered model: about 18 bytes per weight value where the weights
    take half a byte), else ``[]``. Folding runs the same kernels as the run would, so outputs are unchanged; the
    model is still loaded and run by onnxruntime, only without that step."""
    if isinstance(model, Path):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except (OSError, ValueError, RuntimeError, DecodeError):
            return []  # onnxruntime's own load gives the reason
    own = weight_bytes(model)
    folded = folded_bytes(model)
    if folded <= max(FOLDING_LIMIT, own):
        return []
    log.info("onnxruntime's constant folding left to run time: it would hold %.2f GB of folded values at load, the "
             "model's weights are %.2f GB (microsoft/onnxruntime#28203)", folded / 1e9, own / 1e9)
    return ["ConstantFolding"]


@contextlib.contextmanager
def _beside_weights(model: onnx.ModelProto) -> Iterator[Path | None]:
    """``model`` written to a temporary shell in the folder of its weights kept in place, which it names relative to
    it; ``None`` when that folder cannot be written. onnxruntime maps external data from a file (shared with the
    page cache, or freed once repacked), but copies weights handed to it in memory, and it refuses data outside the
    model's folder or behind a symbolic link: beside the weights is the only place it reads them without a copy.
    The tensors a pass wrote inline (a candidate's new weights: a gigabyte of int8 for a large model; those of at
    least ``weights.IN_PLACE_BYTES``) go to a data file beside the shell, so onnxruntime maps those too instead of
    parsing a copy of them; the shell is built field by field (``save_model_file``), the candidate never copied
    whole. Both files are removed as soon as the session has read them."""
    files = {Path(weights.location(t)) for t in weights.in_place_tensors(model)}
    folder = Path(os.path.commonpath([f.parent for f in files]))
    _remove_stale_shells(folder)
    try:
        handle, name = tempfile.mkstemp(prefix=f"{_SHELL_PREFIX}{_HOST}-{os.getpid()}-", suffix=".onnx", dir=folder)
    except OSError:
        yield None
        return
    os.close(handle)
    shell = Path(name)
    data = shell.with_name(shell.name + ".data")
    try:
        save_model_file(model, shell, external=True, location=data.name, refer=True,
                        inline_below=weights.IN_PLACE_BYTES)
    except OSError as e:  # a full disk
        shell.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        log.info("no session shell beside the weights (%s): they are handed to onnxruntime in memory", e)
        yield None
        return
    try:
        yield shell
    finally:
        shell.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


_SHELL_PREFIX = ".graphopt-session-"
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _remove_stale_shells(folder: Path) -> None:
    """Remove the session shells, and their data files, that a graphopt process on this machine, since ended (killed
    while onnxruntime loaded), left beside the weights: each is named by its host and process id. Another host's,
    or a live process's, are left alone."""
    for shell in folder.glob(f"{_SHELL_PREFIX}{_HOST}-*-*.onnx*"):
        pid = shell.name[len(_SHELL_PREFIX) + len(_HOST) + 1:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shell.unlink(missing_ok=True)
            log.info("removed %s, left by process %s", shell, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def check_providers(config: RuntimeConfig) -> None:
    """Raise ``UsageError`` for an execution provider this onnxruntime does not have (it would silently run on the
    CPU instead, and the verdict would be about another runtime)."""
    available = ort.get_available_providers()
    missing = [p for p in config.providers if p not in available]
    if missing:
        raise UsageError(f"execution provider {missing[0]} is not in this onnxruntime (available: "
                         f"{', '.join(available)})")


def run_dataset(
    session: Session,
    dataset: Dataset,
    config: RuntimeConfig | None = None,
    *,
    per_sample: bool | None = None,
    progress: Progress = NULL_PROGRESS,
    label: str = "run",
    spill_bytes: int | None = None,
) -> tuple[Outputs, bool]:
    """Run every sample of ``dataset`` and return ``(outputs, per_sample)``; an output of fixed sample shape that
    takes more than ``spill_bytes`` over the dataset is gathered in a temporary file and returned as its ``Rows``.

    Samples run in batches where every input's first axis is the sample axis and every output's first axis follows
    the batch; otherwise (``per_sample``) one sample per run, outputs stacked on a new axis 0, or kept as a
    ``RaggedOutput`` when their shapes differ between samples. ``per_sample=None`` decides from the model (an output
    whose shape changes from batch to batch also runs per sample: its values may depend on the batch); pass the
    returned flag back to run another model with the same layout. In that layout an output whose shape changes
    between batches is split into a ``RaggedOutput`` of the samples' slices, and one whose first axis no longer
    follows the batch is an ``UnsupportedModelError`` (its samples cannot be told apart).
    """
    config = config or RuntimeConfig()
    if per_sample is None:
        per_sample = not dataset.batchable
        if not per_sample:
            try:
                outputs = _run(session, dataset, config.batch_size, False, progress, label, spill_bytes)
            except _BatchMismatch as e:
                log.info("output %s does not follow the batch axis; running one sample at a time", e.name)
            else:
                ragged = [name for name, output in outputs.items() if isinstance(output, RaggedOutput)]
                if not ragged:
                    return outputs, False
                log.info("output %s changes shape between batches; running one sample at a time", ragged[0])
        return _run(session, dataset, 1, True, progress, label, spill_bytes), True
    try:
        return (_run(session, dataset, 1 if per_sample else config.batch_size, per_sample, progress, label,
                     spill_bytes), per_sample)
    except _BatchMismatch as e:
        raise UnsupportedModelError(f"output '{e.name}' does not follow the batch axis (shape {list(e.shape)} for a "
                                    f"batch of {e.count}), so its samples cannot be compared") from e


class _BatchMismatch(Exception):
    def __init__(self, name: str, shape: tuple[int, ...], count: int) -> None:
        super().__init__(name)
        self.name, self.shape, self.count = name, shape, count


def _run(
    session: Session,
    dataset: Dataset,
    batch_size: int,
    per_sample: bool,
    progress: Progress,
    label: str,
    spill_bytes: int | None = None,
) -> Outputs:
    names = list(dict.fromkeys(o.name for o in session.get_outputs()))  # a graph may list an output twice
    gathered = {n: _Gathered(dataset.n_samples, per_sample, spill_bytes) for n in names}
    with progress.task(label, dataset.n_samples) as advance:
        for feed, count in dataset.batches(batch_size, per_sample=per_sample):
            try:
                values = session.run(names, feed)
            except Exception as e:  # onnxruntime raises several unrelated types for bad feeds
                raise UnsupportedModelError(_run_failure(e)) from e
            for name, value in zip(names, values, strict=True):
                array = _as_array(value)
                if not per_sample and (array.ndim == 0 or array.shape[0] != count):
                    raise _BatchMismatch(name, array.shape, count)
                gathered[name].add(array)
            del values
            advance(count)
    return {n: g.result() for n, g in gathered.items()}


class _Gathered:
    """One output's batches (or single samples, ``stacked`` on a new axis 0) copied as they come into one array sized
    for every sample, or appended to a ``SpillFile`` when that array would take more than ``spill_bytes``, so that a
    run holds no list of batches and makes no concatenated copy of them; once a batch's shape differs, the batches
    are kept apart (in memory) and end as a ``RaggedOutput`` of their samples."""

    def __init__(self, total: int, stacked: bool, spill_bytes: int | None = None) -> None:
        self.total, self.stacked, self.spill_bytes = total, stacked, spill_bytes
        self.whole: np.ndarray | SpillFile | None = None
        self.filled = 0
        self.parts: list[np.ndarray] | None = None

    def add(self, array: np.ndarray) -> None:
        rows = array[np.newaxis] if self.stacked else array
        if self.parts is None:
            if self.whole is None:
                self.whole = self._store(rows)
            if rows.shape[1:] == self.whole.shape[1:] and rows.dtype == self.whole.dtype:
                if isinstance(self.whole, SpillFile):
                    self.whole.append(rows)
                else:
                    self.whole[self.filled:self.filled + len(rows)] = rows
                self.filled += len(rows)
                return
            done = self.result()
            self.parts = list(np.asarray(done)) if self.stacked else [np.asarray(done)]
        self.parts.append(array)

    def _store(self, rows: np.ndarray) -> np.ndarray | SpillFile:
        """Where every sample's rows go, shaped like ``rows``: a file when they are too many bytes to hold."""
        if self.spill_bytes is not None and self.total * rows[:1].nbytes > self.spill_bytes:
            return SpillFile(rows.dtype, rows.shape[1:])
        return np.empty((self.total, *rows.shape[1:]), rows.dtype)

    def result(self) -> Output:
        if self.parts is not None:
            return stack_samples(self.parts) if self.stacked else _join_batches(self.parts)
        if self.whole is None:
            raise ValueError("no samples were run")
        return Rows(self.whole) if isinstance(self.whole, SpillFile) else self.whole[:self.filled]


def _join_batches(batches: list[np.ndarray]) -> Output:
    """Batches concatenated on axis 0, or their samples' slices as a ``RaggedOutput`` when their shapes differ."""
    if len({a.shape[1:] for a in batches}) > 1:
        return RaggedOutput(tuple(sample for batch in batches for sample in batch))
    return np.concatenate(batches, axis=0)


def _run_failure(error: BaseException) -> str:
    """One line for a failed run; an output type numpy has no name for is said in graphopt's words."""
    found = re.search(r"No corresponding Numpy type for Tensor Type\. *(\w+)", str(error))
    if found:
        return (f"an output is {found.group(1)}, which onnxruntime's Python API cannot return; graphopt compares "
                "numpy-typed outputs only")
    return f"onnxruntime failed to run the model: {first_line(error)}"


def _as_array(value: Any) -> np.ndarray:
    """Outputs as arrays: sequences of tensors are stacked, ZipMap-style lists of dicts become [n, classes]."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Iterable):
        items = list(value)
        if items and all(isinstance(i, Mapping) for i in items):
            keys = sorted(items[0])
            return np.asarray([[i[k] for k in keys] for i in items], dtype=np.float64)
        shapes = {np.shape(i) for i in items}
        if len(shapes) > 1:  # SplitToSequence into unequal parts: nothing to stack them into
            raise UnsupportedModelError(f"an output is a sequence of tensors of different shapes "
                                        f"({', '.join(str(list(s)) for s in sorted(shapes))}); graphopt compares "
                                        f"tensors and sequences of equal tensors only")
        return np.asarray(items)
    return np.asarray(value)

