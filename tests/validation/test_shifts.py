"""Shifted inputs: each transform does what its name says on arrays; shifts are chosen by input kind; an identical
model passes every shift, and a model damaged only outside the clean data's range passes on clean samples but fails
exactly the shifts that leave that range; user shifts and ``graphopt.shifts`` hooks run; MiniLM's real sentences
take token dropout and truncation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import digits, figure
from onnx import helper, numpy_helper

import graphopt_zoo as zoo
from graphopt.data import Dataset, input_specs, load_data
from graphopt.errors import ValidationSetupError
from graphopt.validation import shifts as shifts_module
from graphopt.validation.context import ValidationContext
from graphopt.validation.shifts import (
    Shift,
    brightness,
    check_shifts,
    contrast,
    default_shifts,
    gaussian_noise,
    token_dropout,
    truncation_mask,
)
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

METRICS = {"fidelity_cosine", "fidelity_top1", "original_stability_cosine", "original_stability_top1",
           "optimized_stability_cosine", "optimized_stability_top1"}


@pytest.fixture(scope="module", name="digits")
def digits_fixture() -> tuple[onnx.ModelProto, Dataset]:
    return digits(200)

def test_noise_reaches_its_snr_per_sample_and_leaves_the_input_alone(rng: np.random.Generator) -> None:
    x = (rng.standard_normal((64, 3, 32, 32)) * rng.uniform(0.1, 10, (64, 1, 1, 1))).astype(np.float32)
    before = x.copy()
    noisy = gaussian_noise(x, 20.0, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and np.array_equal(x, before)
    signal = np.mean(x.astype(np.float64) ** 2, axis=(1, 2, 3))
    noise = np.mean((noisy - x).astype(np.float64) ** 2, axis=(1, 2, 3))
    snr = 10 * np.log10(signal / noise)
    assert np.allclose(snr, 20.0, atol=0.5), snr  # each sample at 20 dB, whatever its scale


def test_brightness_and_contrast_move_the_values_they_name(rng: np.random.Generator) -> None:
    x = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    assert np.allclose(brightness(x, 0.1) - x, 0.1 * x.std(), atol=1e-6)
    stretched = contrast(x, 1.2)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(stretched.mean(axis=(1, 2, 3), keepdims=True), mean, atol=1e-6)
    assert np.allclose(stretched - mean, 1.2 * (x - mean), atol=1e-6)


def test_token_dropout_replaces_only_real_tokens(rng: np.random.Generator) -> None:
    ids = rng.integers(1000, 2000, (200, 32))
    real = np.arange(32) < rng.integers(4, 32, (200, 1))
    ids[~real] = 0
    dropped = token_dropout(ids, real, 0.2, np.random.default_rng(0), unk_id=7)
    changed = dropped != ids
    assert not changed[~real].any() and (dropped[changed] == 7).all()
    assert 0.17 < changed.sum() / real.sum() < 0.23


def test_truncation_keeps_the_leading_share_of_each_real_sequence() -> None:
    real = np.arange(10) < np.array([[10], [4], [1]])
    kept = truncation_mask(real, 0.5)
    assert kept.sum(axis=1).tolist() == [5, 2, 1]  # rounded up: a token survives
    assert (kept <= real).all() and (np.diff(kept.astype(int), axis=1) <= 0).all()  # a prefix of the real tokens


def test_truncation_shift_zeroes_ids_and_mask_beyond_the_cut_and_keeps_shapes() -> None:
    ids = np.array([[101, 5, 6, 7, 102, 0], [101, 8, 102, 0, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    dataset = Dataset({"input_ids": ids, "attention_mask": mask}, frozenset(), True)
    shift = next(s for s in default_shifts(dataset) if s.label == "truncation to 50%")
    out = shift.apply(dataset.arrays, np.random.default_rng(0))
    assert out["input_ids"].tolist() == [[101, 5, 6, 0, 0, 0], [101, 8, 0, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert np.array_equal(dataset.arrays["input_ids"], ids)  # pure: the held-out arrays are untouched


def test_default_shifts_are_chosen_by_input_kind(rng: np.random.Generator) -> None:
    images = Dataset({"image": rng.random((4, 1, 8, 8)).astype(np.float32)}, frozenset(), True)
    assert [s.label for s in default_shifts(images)] == [
        "noise 40 dB", "noise 30 dB", "noise 20 dB", "brightness +0.1σ", "brightness -0.1σ",
        "contrast ×0.8", "contrast ×1.2", "scale ×0.9", "scale ×1.1"]
    vectors = Dataset({"x": rng.random((4, 8)).astype(np.float32)}, frozenset(), True)
    assert {s.kind for s in default_shifts(vectors)} == {"noise"}
    tokens = Dataset({"input_ids": rng.integers(1, 99, (4, 6)), "attention_mask": np.ones((4, 6), np.int64),
                      "token_type_ids": np.zeros((4, 6), np.int64)}, frozenset(), True)
    found = default_shifts(tokens)
    assert [(s.kind, s.level) for s in found] == [("token_dropout", 0.05), ("token_dropout", 0.1),
                                                  ("token_dropout", 0.2), ("truncation", 0.75), ("truncation", 0.5)]
    dropped = found[2].apply(tokens.arrays, np.random.default_rng(0))
    assert np.array_equal(dropped["attention_mask"], tokens.arrays["attention_mask"])  # masks are not token ids
    assert default_shifts(Dataset({"ids": rng.integers(0, 9, (4,))}, frozenset(), True)) == []


def test_identical_model_passes_every_shift_and_reports_stability(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    section = check_shifts(ValidationContext(model, model, held_out, held_out))
    assert (section.name, section.title, section.passed) == ("shifts", "Shifted inputs", True)
    assert {c.group for c in section.checks} == {"noise", "brightness", "contrast", "scale"}
    for check in section.checks:
        assert set(check.metrics) == METRICS, check.metrics
        assert check.metrics["fidelity_cosine"] == pytest.approx(1.0) and check.metrics["fidelity_top1"] == 1.0
        assert check.metrics["original_stability_cosine"] == check.metrics["optimized_stability_cosine"]
    noise = {c.level: figure(c, "original_stability_cosine") for c in section.checks if c.group == "noise"}
    assert noise[20.0] < noise[30.0] < noise[40.0] < 1.0  # the harder the shift, the further from clean outputs


def _guarded(model: onnx.ModelProto, transform: list[onnx.NodeProto], out: str,
             **constants: float) -> onnx.ModelProto:
    """``model`` with ``transform`` (reading the input, writing ``out``) inserted before every use of the input."""
    damaged = onnx.ModelProto()
    damaged.CopyFrom(model)
    name = damaged.graph.input[0].name
    for node in damaged.graph.node:
        node.input[:] = [out if i == name else i for i in node.input]
    damaged.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items())
    for index, node in enumerate(transform):
        damaged.graph.node.insert(index, node)
    onnx.checker.check_model(damaged, full_check=True)
    return damaged


def test_range_damage_agrees_on_clean_samples_but_fails_the_shifts_that_leave_the_range(
        digits: tuple[onnx.ModelProto, Dataset]) -> None:
    """An input range overflow (values beyond the calibrated [min, max] wrap around, as an integer range too narrow
    for its data would) is invisible on clean held-out samples and flagged by every shift that leaves the range.

    A saturating Clip at the same range is too mild to breach the default budget on this CNN (fidelity cosine
    stays above 0.998), so it is judged with the lossless tolerance: again exactly the out-of-range shifts fail."""
    model, held_out = digits
    x = held_out.to_arrays()["image"]
    low, high = float(x.min()), float(x.max())
    period = (high - low) * 1.001
    wrapped = _guarded(model, [
        helper.make_node("Sub", ["image", "low"], ["shifted"]),
        helper.make_node("Div", ["shifted", "period"], ["turns"]),
        helper.make_node("Floor", ["turns"], ["whole"]),
        helper.make_node("Mul", ["whole", "period"], ["wrap"]),
        helper.make_node("Sub", ["image", "wrap"], ["image_wrapped"]),
    ], "image_wrapped", low=low, period=period)
    clipped = _guarded(model, [helper.make_node("Clip", ["image", "low", "high"], ["image_clipped"])],
                       "image_clipped", low=low, high=high)
    inside = {"contrast ×0.8", "scale ×0.9"}  # both keep [0, 1] data within [0, 1]
    for damaged, tolerance in ((wrapped, Tolerance.budget()), (clipped, Tolerance.lossless())):
        ctx = ValidationContext(model, damaged, held_out, held_out, tolerance=tolerance)
        assert Verifier.compare(ctx.reference(), ctx.candidate(), tolerance, "original").passed  # clean: agrees
        section = check_shifts(ctx)
        assert section.passed is False
        failed = {c.name for c in section.checks if c.passed is False}
        assert failed == {c.name for c in section.checks} - inside, failed
        assert all(c.detail.startswith("logits: ") for c in section.checks if c.passed is False)
    worst = min(c.metrics["fidelity_top1"] or 1.0 for c in check_shifts(
        ValidationContext(model, wrapped, held_out, held_out)).checks)
    assert worst < 0.9  # not a rounding matter: the damaged model changes its answers


def test_user_shifts_replace_the_defaults_and_hooks_add_to_them(digits: tuple[onnx.ModelProto, Dataset],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model, held_out = digits
    ctx = ValidationContext(model, model, held_out, held_out)
    invert = Shift("invert", 1.0, "inverted", lambda arrays, rng: {n: 1 - a for n, a in arrays.items()})
    section = check_shifts(ctx, [invert])
    assert [(c.name, c.group, c.level, c.passed) for c in section.checks] == [("inverted", "invert", 1.0, True)]
    assert figure(section.checks[0], "original_stability_top1") < 0.5  # inverted digits are another task

    class Point:
        name = "inverter"

        @staticmethod
        def load() -> object:
            return lambda dataset: [invert]

    monkeypatch.setattr(shifts_module, "entry_points", lambda group: [Point()] if group == "graphopt.shifts" else [])
    names = [c.name for c in check_shifts(ctx).checks]
    assert names[-1] == "inverted" and "noise 20 dB" in names

    class Broken(Point):
        @staticmethod
        def load() -> object:
            return lambda dataset: ["not a shift"]

    monkeypatch.setattr(shifts_module, "entry_points", lambda group: [Broken()])
    with pytest.raises(ValidationSetupError, match="not a graphopt.validation.shifts.Shift"):
        check_shifts(ctx)


def test_a_shift_the_model_cannot_run_fails_its_check_with_one_line(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    wrong = Shift("crop", 0.5, "crop", lambda arrays, rng: {n: np.ascontiguousarray(a[..., :4]) for n, a in arrays.items()})
    check = check_shifts(ValidationContext(model, model, held_out, held_out), [wrong]).checks[0]
    assert check.passed is False and check.metrics == {} and "\n" not in check.detail and check.detail


def test_no_applicable_input_skips_the_section(rng: np.random.Generator) -> None:
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (int64[N] ids) => (int64[N] y) { y = Identity(ids) }""")
    data = Dataset({"ids": rng.integers(0, 9, (6,))}, frozenset(), True)
    section = check_shifts(ValidationContext(model, model, data, data))
    assert section.skipped == "no input a default shift applies to" and section.passed is None
    assert "ids int64" in section.notes[0]


@pytest.mark.skipif(bool(zoo.available()), reason=zoo.available() or "")
def test_minilm_real_sentences_under_token_dropout_and_truncation(tmp_path: Path) -> None:
    model = onnx.load(str(zoo.export_minilm()))
    data = load_data(zoo.minilm_dataset(tmp_path, n=16), input_specs(model))
    section = check_shifts(ValidationContext(model, model, data, data))
    assert section.passed is True
    assert [c.group for c in section.checks] == ["token_dropout"] * 3 + ["truncation"] * 2
    stability = {c.name: figure(c, "original_stability_cosine") for c in section.checks}
    assert all(c.metrics["fidelity_top1"] is None for c in section.checks)  # embeddings, not classes
    assert 1.0 > stability["token dropout 5%"] > stability["token dropout 20%"]
    assert 1.0 > stability["truncation to 75%"] > stability["truncation to 50%"] > 0.5
