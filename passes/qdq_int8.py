"""QDQ int8: insert QuantizeLinear/DequantizeLinear pairs so the runtime runs Conv, Gemm and MatMul layers in int8.

The pass runs smooth → calibrate → place → correct → rewrite, each step in its own module:

- ``_qdq_smooth``: SmoothQuant where a LayerNorm feeds only quantizable matrix products (α, or none, chosen on
  calibration data by ``_math.smooth``); exact in float.
- ``_qdq_calibration``: the calibration samples stream through the float model and each batch is reduced at once
  into bounded observers (running min/max, a fixed-size histogram), so memory does not grow with the sample count;
  ranges come from the chosen estimator (``_math.quant``). Also the channel means bias correction needs.
- ``_qdq_plan``: which tensors get a pair, following the patterns onnxruntime fuses into int8 kernels, or
  TensorRT's explicit-quantization placement for ``target=tensorrt`` (the rules per target: ``_qdq_targets``). For
  ``ort-cpu`` the operators between quantized layers that this onnxruntime runs in int8 (``_qdq_kernels``: read
  from its kernel registry, gated by its fusion rules) join them in int8 regions. Whether regions pay depends on
  the CPU's int8 kernels: under ``regions=auto`` the speed gate also verifies layers only on the same layers, times
  both in one run and keeps the faster (``speed_variants``).
- ``_qdq_rewrite``: the pairs, int8 per-channel weights (7-bit where the CPU lacks VNNI: onnxruntime's AVX2 u8·s8
  kernels saturate on full-range weights) and int32 biases at ``s_x·s_w``, corrected for the mean output shift
  (``_math.bias_correction``) when that brings the outputs closer on the calibration samples.

Every layer is a unit: when the quantized model breaks the budget, the manager measures each layer's damage alone
and keeps as many layers in int8 as the budget allows; the region ops a layer leads into follow it. The pass serves
latency: the manager's speed gate (``graphopt.gates``) times the final int8 model once against float in its
target's runtime and declines it when it is not faster: ``ort-cpu`` in onnxruntime, ``openvino`` in OpenVINO's CPU
plugin when the package is installed; otherwise, and for ``tensorrt``, the speed is not checked by default
(``speed_check``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import onnx

from graphopt.errors import CalibrationError, PassError, first_line
from graphopt.graph import Scope, copy_model, default_opset, editing, import_graph, model_digest
from graphopt.opset import ensure_opset
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, Skip, SpeedCheck, Unit
from graphopt.runtime import create_session, run_dataset
from graphopt.verify.metrics import comparable, error_stats
from graphopt_passes import _qdq_calibration as calibration
from graphopt_passes import _qdq_dynamic as dynamic
from graphopt_passes import _qdq_plan as plan
from graphopt_passes import _qdq_rewrite as qdq_rewrite
from graphopt_passes import _qdq_smooth as smoothing
from graphopt_passes._math import quant, smooth
from graphopt_passes._qdq_kernels import Fusion, int8_fusions
from graphopt_passes._qdq_targets import TargetRules, rules_for

__all__ = ["QdqInt8Pass"]

_ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

log = logging.getLogger(__name__)


class QdqInt8Pass(PassBase):
    """Quantize Conv/Gemm/MatMul layers to int8 with QDQ pairs a runtime fuses, verified layer by layer."""

    name = "qdq-int8"
    lossless = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        mode: Literal["static", "dynamic"] = field(
            default="static",
            metadata={"help": "static: calibrated QDQ pairs; dynamic: weight MatMuls with per-call activation "
                      "ranges (DynamicQuantizeLinear + MatMulInteger), for models whose static ranges fail, and "
                      "LSTMs (onnxruntime's DynamicQuantizeLSTM)"},
        )
        target: Literal["ort-cpu", "openvino", "tensorrt"] = field(
            default="ort-cpu",
            metadata={"help": "runtime the QDQ model is for: ort-cpu and openvino use uint8 activations and "
                      "onnxruntime's fusion patterns; tensorrt follows TensorRT explicit quantization (symmetric "
                      "int8, pairs on layer inputs only, float biases, quantized residual skip inputs)"},
        )
        ranges: Literal["minmax", "mean-minmax", "percentile", "mse"] = field(
            default="mse", metadata={"help": "activation range estimator"}
        )
        percentile: float = field(default=99.99, metadata={"help": "two-sided percentile for ranges=percentile"})
        weight_bits: Literal["auto", "7", "8"] = field(
            default="auto",
            metadata={"help": "auto: 7 for ort-cpu on CPUs without VNNI (avoids int16 saturation), else 8"},
        )
        per_channel: bool = field(default=True, metadata={"help": "one weight scale per output channel"})
        min_dim: int = field(default=16, metadata={"help": "leave layers with a reduction or output size below this"})
        bias_correction: Literal["auto", "on", "off"] = field(
            default="auto",
            metadata={"help": "fold each layer's mean output shift on calibration data into its bias; auto keeps it "
                      "only if it brings the model's outputs closer to the float model's on those samples"},
        )
        regions: Literal["auto", "on", "off"] = field(
            default="auto",
            metadata={"help": "on: for ort-cpu, also run the operators between quantized layers in int8 where this "
                      "onnxruntime fuses them (SiLU's Sigmoid and Mul, Add, Concat, pools, nearest Resize, Split…); "
                      "off: layers only; auto: on, timed against layers only by the speed check, the faster kept"},
        )
        smooth: Literal["auto", "off"] = field(
            default="auto",
            metadata={"help": "SmoothQuant: where a LayerNorm feeds only quantized MatMul/Gemm, fold per-channel "
                      "scales into it and their weights, with alpha (or none) chosen on calibration data"},
        )
        speed_check: Literal["auto", "decline", "note", "off"] = field(
            default="auto",
            metadata={"help": "time int8 against float (single thread, batch 1, interleaved) in the target's runtime "
                      "(onnxruntime for ort-cpu, OpenVINO for openvino when installed, else onnxruntime): decline an "
                      "int8 model that is not faster, or only note the ratio; auto declines for ort-cpu and for "
                      "openvino when OpenVINO is installed, and is off otherwise"},
        )

        def __post_init__(self) -> None:
            if not 50 <= self.percentile <= 100 or self.min_dim < 1:
                raise ValueError("need 50 <= percentile <= 100 and min_dim >= 1")

    def __init__(self, options: QdqInt8Pass.Options | None = None) -> None:
        super().__init__(options)
        self._state: _Calibration | None = None
        self._covered: bytes | None = None  # the model whose tensors ``_state`` has every range of, for these options
        self._smooth: tuple[bytes, object, onnx.ModelProto, list[str], list[Skip], bytes] | None = None
        self._upgrade: tuple[bytes, onnx.ModelProto, str, bytes] | None = None

    def weight_bits(self, context: PassContext) -> int:
        """The weight width: 7-bit for onnxruntime on a CPU without VNNI (``context.has_vnni``) under ``auto``."""
        if self.options.weight_bits != "auto":
            return int(self.options.weight_bits)
        return 7 if self.options.target == "ort-cpu" and not context.has_vnni else 8

    @property
    def rules(self) -> TargetRules:
        rules = rules_for(self.options.target)
        return replace(rules, regions=False) if self.options.regions == "off" else rules

    def _fusions(self, model: onnx.ModelProto) -> dict[str, Fusion]:
        """The operators this onnxruntime runs in int8 between layers at ``model``'s opset, where regions are on."""
        return int8_fusions(default_opset(model)) if self.rules.regions else {}

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[QdqInt8Pass, ...]:
        """Static and dynamic int8 for latency (whichever this CPU runs faster), static for size."""
        if goal == "latency":
            return cls(), cls(cls.Options(mode="dynamic"))
        return (cls(),)

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        """One unit per layer that can run in int8; the manager measures each one's damage."""
        graph = import_graph(model)
        parts, _ = plan.find_parts(graph, Scope.of(graph), min_dim=self.options.min_dim)
        layers: list[plan.Layer | dynamic.Recurrent] = [layer for part in parts for layer in part.layers]
        if self.options.mode == "dynamic":
            layers = [layer for layer in parts[0].layers if layer.op == "MatMul"]
            layers += dynamic.find_recurrent(graph, min_dim=self.options.min_dim)[0]
        return tuple(Unit(layer.name, None, f"{layer.node.op} {'×'.join(map(str, layer.shape))}")
                     for layer in layers)

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        empty = {"layers_quantized": 0, "tensors_quantized": 0, "weight_bits": self.weight_bits(context)}
        notes: list[str] = []
        static = self.options.mode == "static"
        minimum = 11 if not static else 13 if self.options.per_channel else 10  # DynamicQuantizeLinear; DQ axis
        if not static and not self.rules.dynamic_mode:
            why = f"mode=dynamic writes DynamicQuantizeLinear + MatMulInteger, which {self.options.target} does not run"
            return PassResult(copy_model(model), False, empty, (Skip("graph", why),))
        try:
            model, upgraded, key = self._at_opset(model, minimum)
        except PassError as e:
            return PassResult(copy_model(model), False, empty, (Skip("graph", first_line(e)),))
        notes += [upgraded] if upgraded else []
        built = self._static(model, context, notes, key) if static else self._dynamic(model, context)
        if not built.chosen:
            return PassResult(copy_model(model), False, empty, tuple(built.skipped))
        bits = self.weight_bits(context)
        notes.append(f"weights {bits}-bit" + (" (no VNNI on this CPU: full-range int8 saturates in AVX2 kernels)"
                                             if bits == 7 and self.options.weight_bits == "auto" else ""))
        stats: dict[str, int | float] = {"layers_quantized": len(built.chosen), "tensors_quantized": built.tensors,
                                         "weight_bits": bits, **built.counts}
        log.info("%s: %s", self.name, stats)
        return PassResult(built.model, True, stats, tuple(built.skipped), tuple(notes))

    def serves(self) -> frozenset[Goal]:
        return frozenset({"latency", "size"})

    def verified_in(self) -> str:
        """OpenVINO for ``target=openvino``: its CPU plugin runs QDQ models its own way (low-precision
        transformations), so agreement in onnxruntime does not vouch for it."""
        return "openvino" if self.options.target == "openvino" else "onnxruntime"

    def speed_variants(self, result: PassResult) -> tuple[QdqInt8Pass, ...]:
        """Layers only, where ``regions=auto`` placed regions in ``result``: which pays depends on the CPU's int8
        kernels."""
        if self.options.regions != "auto" or not result.stats.get("region_tensors"):
            return ()
        variant = type(self)(replace(self.options, regions="off"))
        # the same model and samples: the variant reuses the upgrade, smoothing, ranges and channel means measured
        # here, and decides bias correction for its own placement
        variant._upgrade, variant._smooth = self._upgrade, self._smooth
        variant._state = replace(self._state, correction_helps=None) if self._state is not None else None
        return (variant,)

    def speed_check(self) -> SpeedCheck:
        """int8 against float in the target's runtime (``rules.timed_in``); a target not timed here is timed in
        onnxruntime when the user asks for a check, and not at all under ``auto``."""
        check, runtime = self.options.speed_check, self.rules.timed_in
        if runtime is None:
            if check == "auto":
                why = (f"speed not checked: {self.options.target} is not a runtime timed here (onnxruntime, or "
                       "OpenVINO when installed, on this CPU)")
                return SpeedCheck("off", candidate="int8", baseline="the float", notes=(why,))
            runtime = "onnxruntime"
        return SpeedCheck(check, runtime, candidate="int8", baseline="the float")

    def _static(self, model: onnx.ModelProto, context: PassContext, notes: list[str], key: bytes | None) -> _Built:
        """smooth → calibrate → place → correct → rewrite of ``model`` (whose digest is ``key``, when known); a
        ``CalibrationError`` when the ranges cannot be measured (the manager reports the pass as skipped with it)."""
        key = model_digest(model) if key is None else key
        smoothing_skips: list[Skip] = []
        if self.options.smooth == "auto":
            model, smoothing_notes, smoothing_skips, key = self._smoothed(model, context, key)
            notes += smoothing_notes
        state = self._calibration(model, context, key)
        auto = self.options.bias_correction == "auto"
        correct = self.options.bias_correction == "on" or (auto and state.correction_helps is not False)
        built = self._build(model, context, state, correct=correct)
        if auto and state.correction_helps is None and built.counts["biases_corrected"]:
            plain = self._build(model, context, state, correct=False)
            state.correction_helps = _closer(model, built.model, plain.model, context)
            notes.append(f"bias correction {'kept' if state.correction_helps else 'dropped'}: it brought the "
                         f"outputs {'closer to' if state.correction_helps else 'further from'} the float "
                         "model's on the calibration samples")
            built = built if state.correction_helps else plain
        built.skipped += smoothing_skips
        return built

    def _dynamic(self, model: onnx.ModelProto, context: PassContext) -> _Built:
        with editing(model) as edit:
            scope = Scope.of(edit.graph)
            layers, skipped = plan.find_layers(edit.graph, scope, min_dim=self.options.min_dim)
            skipped += [Skip(layer.name, f"dynamic mode quantizes weight MatMuls and LSTMs only ({layer.op} stays "
                                         "float)")
                        for layer in layers if layer.op != "MatMul"]
            chosen = [layer for layer in layers if layer.op == "MatMul" and context.selects(layer.name)]
            recurrent, recurrent_skips = dynamic.find_recurrent(edit.graph, min_dim=self.options.min_dim)
            lstms = [layer for layer in recurrent if context.selects(layer.name)]
            dynamic.rewrite_dynamic(edit.graph, scope, chosen, self._weight_params(context))
            dynamic.rewrite_recurrent(edit.graph, scope, lstms, self.weight_bits(context))
        return _Built(edit.model, [*chosen, *lstms], len({layer.activation for layer in chosen}) + len(lstms),
                      skipped + recurrent_skips, {"lstms_quantized": len(lstms)} if recurrent else {})

    def _build(self, model: onnx.ModelProto, context: PassContext, state: _Calibration, *, correct: bool) -> _Built:
        """The selected layers of the main graph and of every ``If`` branch quantized, each graph placed on its own."""
        chosen: list[plan.Layer] = []
        counts: collections.Counter[str] = collections.Counter({"biases_corrected": 0, "biases_int32": 0,
                                                                "region_tensors": 0})
        tensors = 0
        grids = qdq_rewrite.Grids(state.ranges, signed=self.rules.signed_activations)
        with editing(model) as edit:
            parts, skipped = plan.find_parts(edit.graph, Scope.of(edit.graph), min_dim=self.options.min_dim)
            for part in parts:
                selected = [layer for layer in part.layers if context.selects(layer.name)]
                if not selected:
                    continue
                placement = plan.place(part.graph, part.scope, selected, self.rules, self._fusions(model))
                unmeasured = sorted({tq.source for tq in placement.tensors.values()} - state.ranges.keys())
                if unmeasured:
                    why = (f"in an If branch ({part.graph.name}) that no calibration sample took" if part is not parts[0]
                           else f"no calibration sample gave '{unmeasured[0]}' a value")
                    skipped += [Skip(layer.name, why) for layer in selected]
                    continue
                shifts = self._shifts(model, placement, part.layers, grids, state, context) if correct else {}
                counts.update(qdq_rewrite.rewrite(part.graph, part.scope, placement, grids, shifts,
                                                  self._weight_params(context)))
                counts["region_tensors"] += placement.region_tensors
                chosen += selected
                tensors += len(placement.tensors)
        return _Built(edit.model, chosen, tensors, skipped, dict(counts))

    def _weight_params(self, context: PassContext) -> Callable[[plan.Layer], quant.QuantParams]:
        """Each layer's weight grid at this context's weight width."""
        bits = self.weight_bits(context)
        return lambda layer: quant.weight_params(layer.weight, layer.axis if self.options.per_channel else None,
                                                 bits=bits)

    def _at_opset(self, model: onnx.ModelProto, minimum: int) -> tuple[onnx.ModelProto, str, bytes | None]:
        """``ensure_opset``, with the last upgrade cached by model digest: narrowing runs the pass once per trial on
        the same model, and onnx's version converter takes longer than the rest of a trial's rewrite. Also returns
        the digest of an upgraded model, which keys the caches after it (a digest serialises the whole model, so a
        run takes one), or ``None`` for the model as given, not digested here."""
        if default_opset(model) >= minimum:
            return model, "", None
        key = model_digest(model)
        if not (key and self._upgrade and self._upgrade[0] == key):
            upgraded, note = ensure_opset(model, minimum)
            self._upgrade = (key, upgraded, note, model_digest(upgraded)) if key else None
            return copy_model(upgraded), note, self._upgrade[3] if self._upgrade else b""
        return copy_model(self._upgrade[1]), self._upgrade[2], self._upgrade[3]

    def _smoothed(self, model: onnx.ModelProto, context: PassContext,
                  key: bytes) -> tuple[onnx.ModelProto, list[str], list[Skip], bytes]:
        """``model`` (whose digest is ``key``) with SmoothQuant folded where a LayerNorm feeds only quantizable
        matrix products and some α beats no smoothing on calibration data, and the digest of the result; cached by
        model digest like the calibration."""
        if key and self._smooth and self._smooth[0] == key and self._smooth[1] is context.calibration:
            return self._smooth[2], self._smooth[3], self._smooth[4], self._smooth[5]
        graph = import_graph(model)
        scope = Scope.of(graph)
        layers, _ = plan.find_layers(graph, scope, min_dim=self.options.min_dim)
        groups, skipped = smoothing.find_groups(graph, scope, layers)
        notes: list[str] = []
        searches: dict[str, smooth.SmoothingSearch] = {}
        if groups:
            try:  # smoothing is an improvement: without its measurements the pass quantizes the unsmoothed model
                ranges = calibration.channel_ranges(model, [g.tensor for g in groups], context)
                searches = {g.tensor: smooth.SmoothingSearch(g.weights, *ranges[g.tensor], _ALPHAS,
                                                            weight_bits=self.weight_bits(context)) for g in groups}
                calibration.search_smoothing(model, searches, context)
            except CalibrationError as e:
                notes.append(str(e))
                searches = {}
        chosen = {}
        for group in groups if searches else []:
            alpha, scales, error = searches[group.tensor].best()
            if scales is not None:
                chosen[group.tensor] = scales
                notes.append(f"{group.norm}: smoothed with alpha {alpha:g} (layer error {error:.2e}) for "
                             f"{len(group.readers)} layer(s)")
        result = smoothing.apply_smoothing(model, chosen) if chosen else model
        result_key = model_digest(result) if chosen else key
        self._smooth = (key, context.calibration, result, notes, skipped, result_key) if key else None
        return result, notes, skipped, result_key

    def _calibration(self, model: onnx.ModelProto, context: PassContext, key: bytes) -> _Calibration:
        """Ranges of every tensor any selection could quantize, cached by ``key`` (the model's digest): narrowing
        runs the pass once per trial subset on the same model, and a speed variant starts from its pass's cache
        (``speed_variants``), measuring only the tensors its placement adds."""
        cached = key and self._state and self._state.key == key and self._state.data is context.calibration
        if cached and self._state and self._covered == key:
            return self._state
        graph = import_graph(model)
        parts, _ = plan.find_parts(graph, Scope.of(graph), min_dim=self.options.min_dim)
        names = {name for part in parts if part.layers
                 for name in plan.range_names(part.graph, part.scope, part.layers, self.rules, self._fusions(model))}
        state = self._state if cached and self._state else _Calibration(key, context.calibration, {})
        missing = sorted(names - state.ranges.keys())
        if missing:
            state.ranges.update(calibration.activation_ranges(model, missing, context, self.options.ranges,
                                                              percentile=self.options.percentile,
                                                              signed=self.rules.signed_activations))
        self._state, self._covered = (state, key) if key else (None, None)
        return state

    def _shifts(self, model: onnx.ModelProto, placement: plan.Placement, layers: Sequence[plan.Layer],
                grids: qdq_rewrite.Grids, state: _Calibration, context: PassContext) -> dict[str, np.ndarray]:
        """Bias corrections of the placed layers. Channel means are streamed once per (tensor, grid) and kept; the
        first stream also measures every layer of ``layers`` on its own input's grid, where narrowing places each
        unit alone next (one stream instead of one per unit)."""
        sources = {name: tq.source for name, tq in placement.tensors.items()}
        keys = {calibration.means_key(layer, sources[layer.activation]) for layer in placement.layers
                if layer.bias is not None}
        missing = keys - state.means.keys()
        if missing and not state.means:
            missing |= {calibration.means_key(layer, layer.activation) for layer in layers if layer.bias is not None}
        if missing:
            try:
                state.means.update(calibration.channel_means(model, sorted(missing), grids.params, context))
            except CalibrationError as e:  # bias correction is an improvement: without the means there is none
                log.info("%s: %s", self.name, e)
                return {}
        return calibration.bias_shifts(placement.layers, sources, self._weight_params(context), state.means)


@dataclass
class _Calibration:
    key: bytes
    data: object
    ranges: calibration.Ranges
    means: dict[calibration.MeansKey, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    correction_helps: bool | None = None


@dataclass
class _Built:
    model: onnx.ModelProto
    chosen: list[plan.Layer | dynamic.Recurrent]
    tensors: int
    skipped: list[Skip]
    counts: dict[str, int]


def _closer(reference: onnx.ModelProto, first: onnx.ModelProto, second: onnx.ModelProto,
            context: PassContext) -> bool:
    """Whether ``first``'s outputs are closer than ``second``'s to ``reference``'s on the calibration samples
    (relative squared error, summed over the float outputs and over windows of ``_CLOSER_WINDOW`` samples, so that
    the three models' outputs are held for one window at a time)."""
    data = context.calibration
    assert data is not None
    sessions = [create_session(m, context.runtime) for m in (reference, first, second)]
    errors = [0.0, 0.0]
    per_sample: bool | None = None
    for start in range(0, data.n_samples, _CLOSER_WINDOW):
        window = data.window(start, min(start + _CLOSER_WINDOW, data.n_samples))
        expected, per_sample = run_dataset(sessions[0], window, context.runtime, per_sample=per_sample)
        for i, session in enumerate(sessions[1:]):  # per sample, so outputs whose shape varies by sample compare too
            outputs, _ = run_dataset(session, window, context.runtime, per_sample=per_sample)
            errors[i] += sum(10 ** (-s.snr_db / 10) for s in (error_stats(v, outputs[k]) for k, v in expected.items()
                                                             if v.dtype.kind == "f" and comparable(v, outputs[k])))
    return errors[0] < errors[1]


_CLOSER_WINDOW = 32
