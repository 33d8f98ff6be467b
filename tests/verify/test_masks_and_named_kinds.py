"""Probability maps judged by mask IoU, and outputs judged as the user names them where the graph says nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.errors import OutputKindError
from graphopt.outputs import RaggedOutput
from graphopt.verify.metrics import error_stats, per_sample_iou
from graphopt.verify.output_kinds import output_kinds, parse_output_kind
from graphopt.verify.tolerance import Tolerance, judge
from graphopt.verify.verifier import Verifier


def _maps(rng: np.random.Generator, n: int = 60, side: int = 32, empty_every: int = 3) -> np.ndarray:
    """Text-probability-like maps [n, 1, side, side]: smooth blobs, every ``empty_every``-th map (the 3rd, 6th…)
    empty (~1e-7)."""
    yy, xx = np.mgrid[:side, :side]
    maps = np.full((n, 1, side, side), 1e-7)
    for i in range(n):
        if (i + 1) % empty_every == 0:
            continue
        cy, cx, r = rng.uniform(8, side - 8, 2).tolist() + [rng.uniform(3, 7)]
        maps[i, 0] = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - r) * 1.5))
    return maps


def _sigmoid_model(outputs: dict[str, list[int | str]]) -> onnx.ModelProto:
    nodes = [helper.make_node("Sigmoid", ["x"], ["prob"]), helper.make_node("Relu", ["x"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 50])],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sigmoid_outputs_are_probability_maps_judged_by_mask_iou() -> None:
    kinds = output_kinds(_sigmoid_model({"prob": ["N", 8, 50], "logits": ["N", 8, 50]}))
    assert kinds["prob"].mask_threshold == 0.5 and kinds["prob"].class_axis is None
    assert "Sigmoid" in kinds["prob"].reason
    assert kinds["logits"].mask_threshold is None


def test_a_map_whose_mask_moves_is_rejected_though_its_cosine_is_perfect(rng: np.random.Generator) -> None:
    """Probabilities scaled by 0.9: cosine is exactly 1 (it ignores scale), but every blob's edge pixels fall
    under the detector's threshold, and the boxes it draws shrink."""
    reference = _maps(rng)
    candidate = reference * 0.9
    stats = error_stats(reference, candidate, confidence=0.95, mask_threshold=0.3)
    assert stats.cosine > 0.99999 and stats.iou is not None and stats.iou < 0.98
    verdict = judge({"map": stats}, Tolerance.budget())
    assert not verdict.passed and "mask IoU (above 0.3)" in verdict.failures[0]
    without_mask = error_stats(reference, candidate, confidence=0.95)
    assert without_mask.iou is None and judge({"map": without_mask}, Tolerance.budget()).passed


def test_empty_maps_kept_empty_agree_and_spurious_text_does_not(rng: np.random.Generator) -> None:
    reference = _maps(rng)
    matching = reference + rng.normal(0, 1e-6, reference.shape)
    ious = per_sample_iou(reference, matching, 0.3)
    assert ious is not None and np.all(ious == 1.0)  # empty maps (a third) stay empty: IoU 1, not 0/0
    spurious = matching.copy()
    spurious[2, 0, :4, :4] = 0.9  # sample 2 is empty in the reference: the candidate now finds text there
    ious = per_sample_iou(reference, spurious, 0.3)
    assert ious is not None and ious[2] == 0.0 and np.sum(ious == 1.0) == len(ious) - 1


def test_ragged_maps_are_judged_sample_by_sample(rng: np.random.Generator) -> None:
    maps = [_maps(rng, n=1, side=side)[0] for side in (16, 24, 32)]
    reference = RaggedOutput(tuple(maps))
    candidate = RaggedOutput((maps[0], maps[1] * 0.5, maps[2][:, :8]))  # the last changes shape
    ious = per_sample_iou(reference, candidate, 0.3)
    assert ious is not None and ious[0] == 1.0 and ious[1] < 1.0 and np.isnan(ious[2])
    stats = error_stats(reference, candidate, mask_threshold=0.3)
    assert stats.shape_mismatches == 1 and stats.iou == pytest.approx(np.mean(ious[:2]))


def test_output_kinds_as_the_user_names_them() -> None:
    assert parse_output_kind("classes").class_axis == -1
    assert parse_output_kind("classes:1").class_axis == 1
    assert parse_output_kind("mask:0.3").mask_threshold == 0.3
    assert parse_output_kind(" Mask ").mask_threshold == parse_output_kind("mask:").mask_threshold == 0.5
    values = parse_output_kind("values")
    assert values.class_axis is None and values.mask_threshold is None
    for bad in ("class", "classes:x", "mask:nan", "values:1", ""):
        with pytest.raises(OutputKindError):
            parse_output_kind(bad)
    model = _sigmoid_model({"prob": ["N", 8, 50], "logits": ["N", 8, 50]})
    kinds = output_kinds(model, {"logits": "classes:2", "prob": "values"})
    assert kinds["logits"].class_axis == -1 and "named by the user" in kinds["logits"].reason  # 2 of rank 3: last
    assert kinds["prob"].mask_threshold is None
    with pytest.raises(OutputKindError, match="no output named 'scores'.*prob, logits"):
        output_kinds(model, {"scores": "values"})


def _raw_logits_model(rng: np.random.Generator) -> onnx.ModelProto:
    """[N, 8, 64] features → MatMul → raw logits [N, 8, 300]: a CTC head exported without its Softmax."""
    weight = numpy_helper.from_array(rng.standard_normal((64, 300)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "ctc",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 64])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 8, 300])],
                              [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_named_class_axis_judges_raw_logits_per_position(rng: np.random.Generator, tmp_path: Path) -> None:
    model = _raw_logits_model(rng)
    data = graphopt.Dataset({"x": rng.standard_normal((40, 8, 64)).astype(np.float32)}, frozenset(), batchable=True)
    by_graph = Verifier(model, data)
    named = Verifier(model, data, kinds=output_kinds(model, {"logits": "classes"}))
    reference = by_graph.reference["logits"]
    candidate = reference.copy()
    n, t = np.nonzero(rng.random(reference.shape[:2]) < 0.05)  # 5% of positions read another class
    candidate[n, t, (reference[n, t].argmax(axis=1) + 1) % 300] = reference[n, t].max(axis=1) + 0.01
    assert by_graph.against_original({"logits": candidate}, Tolerance.budget()).passed  # cosine alone: accepted
    verdict = named.against_original({"logits": candidate}, Tolerance.budget())
    assert not verdict.passed and "top-1 agreement" in verdict.failures[0]

    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **data.to_arrays())
    code = main(["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o",
                 str(tmp_path / "o.onnx"), "--output-kind", "logits=classes:-1"])
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert code == 0 and report["outputs"]["logits"]["class_axis"] == -1
    assert report["outputs"]["logits"]["reason"].startswith("named by the user")


@pytest.mark.parametrize("flag", ["logits", "scores=values", "logits=softmax", "=values"])
def test_a_bad_output_kind_is_a_one_line_usage_error(flag: str, rng: np.random.Generator, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(_raw_logits_model(rng), tmp_path / "m.onnx")
    code = main(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--output-kind", flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()
