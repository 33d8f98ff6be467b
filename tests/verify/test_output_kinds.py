"""Each output judged by what it is: class axes from the graph, per-position top-1, no top-1 on regression heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

import graphopt
from graphopt.verify.metrics import HEURISTIC, error_stats
from graphopt.verify.output_kinds import output_kinds
from graphopt.verify.tolerance import Tolerance, judge


def _model(nodes: list[onnx.NodeProto], outputs: dict[str, list[int | str]], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 500])],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_class_axes_come_from_the_graph() -> None:
    model = _model([helper.make_node("LogSoftmax", ["x"], ["ctc"], axis=2),
                    helper.make_node("Relu", ["x"], ["scores"]), helper.make_node("ArgMax", ["scores"], ["ids"], axis=1),
                    helper.make_node("Softmax", ["x"], ["old_default"]),
                    helper.make_node("ReduceMean", ["x"], ["boxes"], axes=[2], keepdims=0),
                    helper.make_node("ReduceMax", ["x"], ["logits"], axes=[2], keepdims=0)],
                   {"ctc": ["N", 8, 500], "scores": ["N", 8, 500], "old_default": ["N", 8, 500], "boxes": ["N", 8],
                    "logits": ["N", 8]})
    kinds = output_kinds(model)
    assert kinds["ctc"].class_axis == -1 and "LogSoftmax over axis 2" in kinds["ctc"].reason
    assert kinds["scores"].class_axis == -2 and "ArgMax over axis 1" in kinds["scores"].reason
    assert kinds["old_default"].class_axis == -1  # opset 13+: Softmax's axis defaults to -1
    assert kinds["boxes"].class_axis is None and "regression" in kinds["boxes"].reason
    assert kinds["logits"].class_axis == HEURISTIC
    assert output_kinds(_model([helper.make_node("Softmax", ["x"], ["p"])], {"p": ["N", 8, 500]}, opset=12))[
        "p"].class_axis == -2  # before opset 13 the default axis is 1


def test_raw_outputs_beside_a_softmax_are_values_unless_named_like_scores() -> None:
    """MTCNN's O-Net: face probabilities made by Softmax [N, 2], and box [N, 4] and landmark [N, 10] heads from plain
    MatMuls, named dense_5 and dense_6. The shape heuristic would judge the boxes by top-1."""
    weights = {name: helper.make_tensor(name, onnx.TensorProto.FLOAT, [500, n], np.zeros(500 * n, np.float32))
               for name, n in (("w_prob", 2), ("w_box", 4), ("w_lm", 10), ("w_logits", 2))}
    nodes = [helper.make_node("ReduceMean", ["x"], ["features"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["features", "w_prob"], ["raw"]),
             helper.make_node("Softmax", ["raw"], ["softmax_2"], axis=1),
             helper.make_node("MatMul", ["features", "w_box"], ["dense_5"]),
             helper.make_node("MatMul", ["features", "w_lm"], ["dense_6"]),
             helper.make_node("MatMul", ["features", "w_logits"], ["face_logits"])]
    model = _model(nodes, {"softmax_2": ["N", 2], "dense_5": ["N", 4], "dense_6": ["N", 10], "face_logits": ["N", 2]})
    model.graph.initializer.extend(weights.values())
    kinds = output_kinds(model)
    assert kinds["softmax_2"].class_axis == -1
    assert kinds["dense_5"].class_axis is None and "beside 'softmax_2'" in kinds["dense_5"].reason
    assert kinds["dense_6"].class_axis is None
    assert kinds["face_logits"].class_axis == HEURISTIC  # named like scores: still top-1 when shaped like them
    del model.graph.output[0]  # without the Softmax output nothing says the raw outputs are not scores
    assert {kind.class_axis for kind in output_kinds(model).values()} == {HEURISTIC}


def _sequence_head(rng: np.random.Generator, n: int = 60, steps: int = 24, classes: int = 6000) -> np.ndarray:
    """CTC-like log-probabilities [n, steps, classes]: one confident class per position, the rest flat."""
    logits = rng.standard_normal((n, steps, classes)) * 0.5
    logits[np.arange(n)[:, None], np.arange(steps)[None, :], rng.integers(0, classes, (n, steps))] += 4.0
    return logits


def test_a_sequence_head_that_cosine_accepts_is_rejected_by_per_position_top1(rng: np.random.Generator) -> None:
    """A recogniser whose wrong characters hide in thousands of near-equal scores: cosine 0.9999, but 7% of the
    positions now read another character."""
    reference = _sequence_head(rng)
    candidate = reference.copy()
    flip = rng.random(reference.shape[:2]) < 0.07
    winners = reference.argmax(axis=2)
    runner = rng.integers(0, reference.shape[2], reference.shape[:2])
    n, t = np.nonzero(flip)
    candidate[n, t, runner[n, t]] = reference[n, t, winners[n, t]] + 0.1
    by_shape = error_stats(reference, candidate, confidence=0.95)  # the old rule: rank 3 is no classifier
    assert by_shape.top1 is None and by_shape.cosine > 0.99 and judge({"ctc": by_shape}, Tolerance.budget()).passed
    per_position = error_stats(reference, candidate, confidence=0.95, class_axis=-1)
    assert per_position.top1 is not None and abs(per_position.top1 - (1 - flip.mean())) < 1e-9
    verdict = judge({"ctc": per_position}, Tolerance.budget())
    assert not verdict.passed and "top-1 agreement" in verdict.failures[0]


def test_a_regression_head_is_never_judged_by_top1(rng: np.random.Generator) -> None:
    """Face boxes [N, 4]: the heuristic would call them 4-class scores and reject a 0.9956-cosine candidate for
    'top-1 agreement 0.98' on coordinates."""
    boxes = rng.random((100, 4)) * 100
    moved = boxes + rng.standard_normal(boxes.shape) * 0.5
    order_changed = np.argmax(boxes, axis=1) != np.argmax(moved, axis=1)
    assert order_changed.any()
    assert error_stats(boxes, moved).top1 is not None  # the shape heuristic
    stats = error_stats(boxes, moved, confidence=0.95, class_axis=None)
    assert stats.top1 is None and judge({"boxes": stats}, Tolerance.budget()).passed


def test_segmentation_logits_are_judged_per_pixel(rng: np.random.Generator) -> None:
    reference = rng.standard_normal((40, 5, 6, 6))
    candidate = reference.copy()
    candidate[:, :, 0, 0] = candidate[:, ::-1, 0, 0]  # one pixel of 36 changes class in every image
    changed = np.mean(np.argmax(reference[:, :, 0, 0], 1) != np.argmax(candidate[:, :, 0, 0], 1))
    stats = error_stats(reference, candidate, class_axis=1)
    assert stats.top1 is not None and abs(stats.top1 - (1 - changed / 36)) < 1e-9


def test_the_report_says_how_each_output_was_judged(tmp_path: Path) -> None:
    model = _model([helper.make_node("LogSoftmax", ["x"], ["ctc"], axis=2),
                    helper.make_node("ReduceMean", ["x"], ["boxes"], axes=[2], keepdims=0)],
                   {"ctc": ["N", 8, 500], "boxes": ["N", 8]})
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((4, 8, 500)).astype(np.float32))
    outputs = graphopt.optimize(model, tmp_path / "d.npz").report.to_dict()["outputs"]
    assert outputs["ctc"] == {"class_axis": -1, "mask_threshold": None,
                              "reason": "made by LogSoftmax over axis 2: class scores"}
    assert outputs["boxes"]["class_axis"] is None
