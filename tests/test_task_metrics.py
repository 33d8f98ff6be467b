"""Task metrics as the budget: the shipped metrics, their drop judged on its confidence bound, and a metric plugin
(an entry point of the ``graphopt.metrics`` group) holding ``optimize`` and ``validate`` to the task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLES

import graphopt
from graphopt.cli import main
from graphopt.errors import UsageError
from graphopt.metrics import accuracy, ctc_greedy_accuracy, ctc_greedy_decode
from graphopt.validation.held_out import load_metric
from graphopt.verify.task import TaskBudget, judge_task

DIGITS, DATA, LABELS = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits.npz", EXAMPLES / "digits_labels.npy"


def _one_hot_paths(paths: list[list[int]], classes: int = 5) -> np.ndarray:
    scores = np.full((len(paths), len(paths[0]), classes), -5.0)
    for i, path in enumerate(paths):
        scores[i, np.arange(len(path)), path] = 0.0
    return scores


def test_ctc_greedy_decoding_collapses_repeats_and_drops_blanks() -> None:
    scores = _one_hot_paths([[0, 3, 3, 0, 3, 1, 1, 0], [2, 2, 2, 2, 0, 0, 0, 0]])
    assert ctc_greedy_decode(scores) == [[3, 3, 1], [2]]
    labels = np.array([[3, 3, 1, -1], [2, 4, -1, -1]])
    assert ctc_greedy_accuracy({"out": scores}, labels).tolist() == [1.0, 0.0]


def test_accuracy_scores_each_sample() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    assert accuracy({"logits": logits}, np.array([1, 1, 1])).tolist() == [1.0, 0.0, 1.0]
    assert load_metric("accuracy") is accuracy and load_metric("ctc-greedy") is ctc_greedy_accuracy


def test_a_drop_inside_the_budget_on_average_but_not_on_its_bound_fails() -> None:
    budget = TaskBudget("accuracy", accuracy, max_drop=0.02)
    before = np.ones(200)
    after = np.ones(200)
    after[:3] = 0.0  # 1.5% of the samples lost: inside 0.02 on the mean, not with 95% confidence
    result = judge_task(budget, before, after, confidence=0.95)
    assert result.drop == pytest.approx(0.015) and result.drop_high is not None and result.drop_high > 0.02
    assert result.failures and "upper confidence bound" in result.failures[0]
    assert not judge_task(budget, before, after, confidence=None).failures
    assert not judge_task(budget, 0.99, 0.98, confidence=0.95).failures  # a set-level metric: the number itself


def test_the_metric_is_the_budget_in_optimize(tmp_path: Path) -> None:
    """With cosine and top-1 switched off, only accuracy on the labels judges: two values per weight lose 66 points."""
    off = graphopt.Tolerance(cosine=0.0, top1=0.0)
    broken = graphopt.optimize(DIGITS, DATA, passes="weight-clustering{clusters=2}", tolerance=off,
                               labels=LABELS, metric="accuracy", max_drop=0.01).report.record("weight-clustering")
    assert broken.status == "rolled back" and broken.reason.startswith("accuracy drops")
    task = broken.verifications[-1]["task"]
    assert task["metric"] == "accuracy" and task["original"] == pytest.approx(0.98997, abs=1e-4)
    kept = graphopt.optimize(DIGITS, DATA, passes="weight-clustering", labels=LABELS, metric="accuracy")
    record = kept.report.record("weight-clustering")
    assert record.status in ("applied", "narrowed") and record.verifications[-1]["task"]["drop_high"] <= 0.01
    with pytest.raises(UsageError, match="needs labels"):
        graphopt.optimize(DIGITS, DATA, passes="weight-clustering", metric="accuracy")


def test_the_metric_in_the_cli_and_in_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clustered.onnx"
    assert main(["optimize", str(DIGITS), "--data", str(DATA), "--labels", str(LABELS), "--metric", "accuracy",
                 "--max-drop", "0.005", "--passes", "weight-clustering", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["validate", str(DIGITS), str(out), "--data", str(DATA), "--labels", str(LABELS), "--metric",
                 "accuracy", "--skip", "folds,shifts,environments,performance"]) == 0
    assert "metric" in capsys.readouterr().out
    assert main(["optimize", str(DIGITS), "--data", str(DATA), "--metric", "nope", "--labels", str(LABELS),
                 "--passes", "weight-clustering", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
