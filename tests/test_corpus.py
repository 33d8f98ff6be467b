"""The robustness corpus in CI: a fixed sample of onnx's backend node tests and two light CNNs through normalisation
and every registered pass, with verification; no errors (tracebacks, passes that raised, written models that fail
``onnx.checker`` or onnxruntime). The full run is ``python benchmarks/bench_corpus.py``; cases, data and the
classification are described in ``benchmarks/corpus.py``, loaded here from its file.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVERY = 12  # every k-th node test and every k-th weights variant, in name order (about 160 + 110)

# Hand-picked: control flow with subgraphs, integer/bool/string/float16/NaN inputs, sequences and optionals
# (refused or passed through), ai.onnx.ml, quantized and float8/int4 ops, weight-bearing ops (also as weights
# variants, where the weight passes rewrite), functions, a model that fails onnx.checker, models without inputs,
# preview-domain ops, and two light CNNs: one as shipped, one with random weights.
PICKED = (
    "test_if", "test_if_seq", "test_if_opt", "test_loop11", "test_loop13_seq", "test_loop16_seq_none",
    "test_scan9_sum", "test_scan_sum",
    "test_and2d", "test_bitwise_and_ui8_bcast_4v3d", "test_argmax_default_axis_example", "test_nonzero_example",
    "test_string_concat", "test_regex_full_match_basic", "test_equal_string", "test_string_split_basic",
    "test_cast_FLOAT_to_FLOAT16", "test_cast_BFLOAT16_to_FLOAT", "test_isnan",
    "test_sequence_insert_at_back", "test_split_to_sequence_1", "test_identity_sequence",
    "test_optional_get_element_tensor", "test_optional_has_element_empty_no_input_optional_input",
    "test_ai_onnx_ml_label_encoder_string_int", "test_ai_onnx_ml_tree_ensemble_single_tree",
    "test_ai_onnx_ml_binarizer", "test_ai_onnx_ml_array_feature_extractor",
    "test_qlinearconv", "test_qlinearmatmul_2D_uint8_float32", "test_matmulinteger", "test_convinteger_with_padding",
    "test_dequantizelinear", "test_quantizelinear_axis", "test_dynamicquantizelinear", "test_dequantizelinear_int4",
    "test_quantizelinear_e4m3fn",
    "test_conv_with_strides_padding", "test_convtranspose", "test_gemm_all_attributes", "test_matmul_2d",
    "test_lstm_defaults", "test_gru_defaults", "test_batchnorm_example", "test_layer_normalization_2d_axis0",
    "test_attention_3d", "test_einsum_batch_matmul", "test_range_float_type_positive_delta_expanded",
    "test_mvn", "test_constant", "test_adagrad", "test_stft",
    "test_conv_with_strides_padding+weights", "test_convtranspose_group_2+weights", "test_gemm_default_vector_bias+weights",
    "test_gemm_all_attributes+weights", "test_matmul_2d+weights", "test_matmul_4d+weights", "test_lstm_defaults+weights",
    "test_gru_defaults+weights", "test_batchnorm_example+weights", "test_layer_normalization_2d_axis0+weights",
    "test_qlinearconv+weights", "test_attention_3d+weights", "test_einsum_batch_matmul+weights",
    "test_reshape_negative_dim+weights", "test_gather_0+weights", "test_prelu_broadcast+weights",
    "light_shufflenet", "light_squeezenet+weights",
)
# Cases the full run found slow (21–110 s per profile on 2 cores), kept out of the sample rather than stopped; the
# slowest node test takes under 2 s, light_squeezenet+weights about 6 s.
SLOW = frozenset(f"light_{name}+weights" for name in (
    "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "vgg19", "zfnet512"))
STRESSED = ("node+weights", "light+weights")  # kinds also run under the stress profile


def _load_corpus() -> ModuleType:
    """``benchmarks/corpus.py`` by path (the benchmarks folder is not a package and not on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location("corpus", ROOT / "benchmarks" / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["corpus"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()


def sample() -> list[Any]:
    """Every ``EVERY``-th node test and weights variant, the picked cases, less the slow ones, in corpus order."""
    picked = set(PICKED)
    cases = list(corpus.iter_cases())
    chosen = picked | {c.name for kind in ("node", "node+weights") for c in [c for c in cases if c.kind == kind][::EVERY]}
    missing = picked - {c.name for c in cases}
    assert not missing, f"picked cases not in this onnx version: {sorted(missing)}"
    return [c for c in cases if c.name in chosen and c.name not in SLOW]


@pytest.mark.parametrize("profile", corpus.PROFILES)
def test_corpus_sample_has_no_errors(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [c for c in sample() if profile == "default" or c.kind in STRESSED]
    tally = corpus.Tally(slow_seconds=20.0)
    started = time.perf_counter()
    for case in cases:
        tally.add(corpus.run_case(case, profile))
    with capsys.disabled():
        print(f"\ncorpus sample, profile {profile}: {tally.summary()} (wall {time.perf_counter() - started:.0f} s)")
        print(tally.markdown(top=10))
    assert tally.models == len(cases) and tally.outcomes["error"] == 0, "\n\n".join(
        f"{name}: {reason}\n{details}" for name, reason, details in tally.errors)
    assert not tally.caught, tally.caught  # candidates that failed the check are pass bugs too
    assert tally.kinds["light"] + tally.kinds["light+weights"] == (2 if profile == "default" else 1)
    for outcome in ("applied", "unchanged") + (("refused",) if profile == "default" else ()):
        assert tally.outcomes[outcome] > 0, outcome  # the sample spans every kind of ending


def test_data_are_two_stacked_copies_and_non_tensors_are_refused() -> None:
    from graphopt.errors import GraphoptError

    add = next(corpus.iter_cases("^test_add$"))
    data = corpus.dataset(add)
    assert data.n_samples == 2 and data.stacked == frozenset(data.arrays) and not data.synthetic
    for name, array in data.arrays.items():
        assert (array[0] == array[1]).all(), name
    calibration, verification = data.split(0.5)
    assert calibration.n_samples == verification.n_samples == 1
    sequence = next(corpus.iter_cases("^test_sequence_insert_at_back$"))
    with pytest.raises(GraphoptError, match="not a tensor"):
        corpus.dataset(sequence)
    result = corpus.run_case(sequence)
    assert result.outcome == "refused" and "not a tensor" in result.reason


def test_reason_key_masks_names_and_numbers() -> None:
    key = corpus.reason_key("nothing to change (3 of 4 skipped: 'conv1_w' is 1.5e-3 below float16 at opset 17)")
    assert key == "nothing to change (# of # skipped: '…' is # below float16 at opset #)"
    assert corpus.reason_key("onnxruntime's CPU EP has no float16 Gemm kernel") == \
        "onnxruntime's CPU EP has no float16 Gemm kernel"
