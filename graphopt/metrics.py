"""Task metrics: what the user's task cares about, as a budget for ``optimize`` and a check for ``validate``.

A metric takes the model's outputs over the samples (by output name; an output whose shape varies by sample is a
``RaggedOutput``) and the samples' labels, and returns one score per sample (higher is better; a float for the
whole set is accepted too, but then no confidence bound can be put on its drop). Register one in the
``graphopt.metrics`` entry-point group of your package:

    [project.entry-points."graphopt.metrics"]
    my-metric = "my_package.metrics:my_metric"

and name it with ``--metric my-metric``. Two ship with graphopt: ``accuracy`` (argmax of the classifier output
against class labels) and ``ctc-greedy`` (exact-sequence accuracy of a CTC head decoded greedily).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphopt.errors import DataError
from graphopt.outputs import Output, RaggedOutput

__all__ = ["accuracy", "ctc_greedy_accuracy", "ctc_greedy_decode"]


def accuracy(outputs: Mapping[str, Output], labels: np.ndarray) -> np.ndarray:
    """1.0 per sample whose argmax over the first ``[samples, classes]`` output equals its class label."""
    scores = _output(outputs, labels, rank=2)
    truth = _integer_labels(labels, len(scores)).reshape(-1)
    if truth.size != len(scores):
        raise DataError(f"accuracy needs one class label per sample, got labels of shape {list(labels.shape)}")
    return (np.argmax(scores, axis=1) == truth).astype(np.float64)


def ctc_greedy_decode(log_probs: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding of ``[samples, steps, classes]`` scores: the argmax at every step, repeats collapsed,
    blanks dropped."""
    best = np.argmax(log_probs, axis=2)
    decoded = []
    for path in best:
        keep = np.ones(len(path), bool)
        keep[1:] = path[1:] != path[:-1]
        decoded.append([int(c) for c in path[keep] if c != blank])
    return decoded


def ctc_greedy_accuracy(outputs: Mapping[str, Output], labels: np.ndarray, blank: int = 0) -> np.ndarray:
    """1.0 per sample whose greedy CTC decoding of the first ``[samples, steps, classes]`` output equals its label
    sequence: ``labels`` is ``[samples, length]`` of class indices, padded with negative values."""
    scores = _output(outputs, labels, rank=3)
    truth = _integer_labels(labels, len(scores)).reshape(len(scores), -1)
    decoded = ctc_greedy_decode(scores, blank)
    return np.array([float(d == [int(c) for c in row if c >= 0]) for d, row in zip(decoded, truth, strict=True)])


def _output(outputs: Mapping[str, Output], labels: np.ndarray, rank: int) -> np.ndarray:
    """The first float output of ``rank`` with one entry per label."""
    for value in outputs.values():
        if (not isinstance(value, RaggedOutput) and value.ndim == rank and np.issubdtype(value.dtype, np.floating)
                and len(value) == len(labels)):
            return np.asarray(value)
    raise DataError(f"the metric needs a float output of rank {rank} with one entry per label ({len(labels)}); "
                    f"the model has {', '.join(_describe(v) for v in outputs.values())}")


def _describe(value: Output) -> str:
    return f"a ragged output of {len(value)} samples" if isinstance(value, RaggedOutput) else f"{list(value.shape)}"


def _integer_labels(labels: np.ndarray, samples: int) -> np.ndarray:
    if len(labels) != samples or labels.dtype.kind not in "iuf" or not np.all(labels == np.floor(labels)):
        raise DataError(f"the metric needs integer class labels, one row per sample (got {labels.dtype} "
                        f"{list(labels.shape)} for {samples} samples)")
    return labels.astype(np.int64)
