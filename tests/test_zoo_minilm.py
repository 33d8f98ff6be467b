"""The model zoo's all-MiniLM-L6-v2: a real transformer exported offline, checked against sentence-transformers.

The export goes to the zoo's default cache (``~/.cache/graphopt-zoo``), so only the first run pays for it (~15 s on
2 cores); later runs reuse it through its stamp. Tests that need torch skip with the reason when it is missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt_zoo import available, export_minilm, minilm_dataset, real_sentences, tokenize
from graphopt_zoo.minilm import EMBEDDING_DIM, INPUT_NAMES, OUTPUT_NAME, model_dir
from graphopt_zoo.sentences import MAX_WORDS, MIN_WORDS

REASON = available()
needs_minilm = pytest.mark.skipif(bool(REASON), reason=REASON)


@pytest.fixture(scope="session")
def minilm_onnx() -> Path:
    return export_minilm()


def test_real_sentences_are_deterministic_distinct_prose() -> None:
    sentences = real_sentences(256, seed=0)
    assert sentences == real_sentences(256, seed=0)
    assert real_sentences(32, seed=0) == sentences[:32]
    assert real_sentences(32, seed=1) != sentences[:32]
    assert len(set(sentences)) == 256
    for sentence in sentences:
        assert MIN_WORDS <= len(sentence.split()) <= MAX_WORDS, sentence
        assert sentence[0].isupper() and sentence.endswith("."), sentence
    with pytest.raises(ValueError, match="pool holds"):
        real_sentences(10**7)


@needs_minilm
def test_export_is_cached_by_stamp(minilm_onnx: Path) -> None:
    mtime = minilm_onnx.stat().st_mtime_ns
    start = time.perf_counter()
    assert export_minilm() == minilm_onnx
    assert time.perf_counter() - start < 1.0
    assert minilm_onnx.stat().st_mtime_ns == mtime


@needs_minilm
def test_export_matches_sentence_transformers(minilm_onnx: Path) -> None:
    from sentence_transformers import SentenceTransformer

    onnx.checker.check_model(str(minilm_onnx), full_check=True)
    session = ort.InferenceSession(str(minilm_onnx), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [(name, "tensor(int64)") for name in INPUT_NAMES]
    (output,) = session.get_outputs()
    assert (output.name, output.type, output.shape[1]) == (OUTPUT_NAME, "tensor(float)", EMBEDDING_DIM)

    sentences = real_sentences(32, seed=3)
    embedder = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    feeds = tokenize(sentences)
    reference = embedder.tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    for name in INPUT_NAMES:
        np.testing.assert_array_equal(feeds[name], reference[name])

    (got,) = session.run([OUTPUT_NAME], feeds)
    want = embedder.encode(sentences, batch_size=32, convert_to_numpy=True)
    assert got.shape == want.shape == (32, EMBEDDING_DIM)
    assert np.abs(got - want).max() <= 1e-4
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99999


@needs_minilm
def test_dataset_is_named_and_padded_like_the_inputs(tmp_path: Path) -> None:
    path = minilm_dataset(tmp_path, n=64)
    with np.load(path) as data:
        arrays = dict(data)
    assert sorted(arrays) == sorted(INPUT_NAMES)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.int64)}
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape
    assert arrays["input_ids"].shape[0] == 64
    assert (arrays["attention_mask"].sum(1) > 2).all()  # every sample holds a sentence between [CLS] and [SEP]

    with np.load(minilm_dataset(tmp_path, n=8, seq_len=16)) as fixed:
        assert fixed["input_ids"].shape == fixed["attention_mask"].shape == (8, 16)
        assert fixed["attention_mask"][:, 0].all()


@needs_minilm
def test_optimize_verifies_the_real_model(minilm_onnx: Path, tmp_path: Path) -> None:
    result = graphopt.optimize(minilm_onnx, minilm_dataset(tmp_path, n=64), passes="zero-weight-elimination")
    records = {p.name: p for p in result.report.passes}
    assert list(records) == ["normalize", "zero-weight-elimination", "drop-inferred-shapes"]
    assert result.report.data["verification_samples"] > 0
    verified = [p for p in records.values() if p.verifications]
    assert verified, "no pass was verified"
    for record in verified:
        assert record.status in ("applied", "narrowed")
        assert record.worst is not None
        assert record.worst["output"] == OUTPUT_NAME
        assert record.worst["cosine"] > 0.9999
    assert os.path.basename(result.report.input_path or "") == minilm_onnx.name
