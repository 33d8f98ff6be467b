"""Stability across environments: the optimised model is verified under one onnxruntime configuration, but ships
to others. Thread counts change reduction order, graph optimisation levels change which kernels fuse, other
execution providers and OpenVINO use other kernels altogether; a rewrite that sits on the edge of its budget can
pass in one and fail in another. Two runs of one configuration must also agree bit for bit.

Every environment is judged against the original's reference outputs with the tolerance, and its drift is
measured against a baseline: the optimised model on CPU, one thread, the configured graph optimisation.

OpenVINO picks its floating-point precision from the CPU: bf16 where the CPU has native bf16 (AVX-512 BF16), f32
elsewhere (``graphopt.openvino``). The ``openvino`` check runs what a user gets here, OpenVINO's defaults, and states
the precision read back from the compiled model; ``openvino precision=f32`` runs it with f32 pinned, OpenVINO's
default on every CPU without bf16. Both are judged by the tolerance, as every environment is: bf16 rounds each
layer to 8 significant bits, so neither is expected to match onnxruntime bit for bit, and their drift says by how
much each differs. Only ``repeat`` (onnxruntime run twice) must be bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.data import Dataset
from graphopt.errors import GraphoptError, first_line
from graphopt.openvino import F32_CONFIG, compile_cpu, inference_precision, openvino_reason, unavailable
from graphopt.outputs import Output, Outputs, RaggedOutput, stack_samples
from graphopt.runtime import ORT_ERRORS, RuntimeConfig, create_session, run_dataset
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section
from graphopt.verify.metrics import comparable, error_stats, identical
from graphopt.verify.verifier import Verifier

__all__ = ["CPU", "OPENVINO", "OPENVINO_F32", "Environment", "OpenVinoRun", "baseline_runtime", "check_environments",
           "default_environments", "openvino_outputs", "openvino_run"]

CPU = "CPUExecutionProvider"
LEVELS = ("disable", "basic", "all")
OPENVINO = "openvino"
"""The check of OpenVINO's CPU plugin with its defaults: the precision this CPU gets (its detail says which)."""
OPENVINO_F32 = "openvino precision=f32"
"""The check of OpenVINO's CPU plugin with f32 pinned (``graphopt.openvino.F32_CONFIG``)."""


@dataclass(frozen=True)
class Environment:
    """An onnxruntime configuration to run the optimised model under; ``group`` and ``level`` place it in a plot."""

    name: str
    runtime: RuntimeConfig
    group: str = ""
    level: float | None = None


def baseline_runtime(runtime: RuntimeConfig) -> RuntimeConfig:
    """The reference environment for drift: CPU only, one thread, ``runtime``'s graph optimisation and batch."""
    return replace(runtime, providers=(CPU,), intra_op_threads=1)


def default_environments(runtime: RuntimeConfig, providers: Sequence[str] | None = None) -> list[Environment]:
    """Threads 1, 2 and every core; each graph optimisation level; each execution provider other than the CPU's
    (with the CPU as fallback for the nodes it does not take). ``providers`` defaults to those onnxruntime has."""
    base = baseline_runtime(runtime)
    threads = dict.fromkeys((1, 2, os.cpu_count() or 1))
    found = ort.get_available_providers() if providers is None else list(providers)
    return [
        *(Environment(f"threads={t}", replace(base, intra_op_threads=t), "threads", float(t)) for t in threads),
        *(Environment(f"optimization={level}", replace(base, graph_optimization=level), "optimization")
          for level in LEVELS),
        *(Environment(f"provider={p}", replace(base, providers=(p, CPU)), "provider") for p in found if p != CPU),
    ]


def _drift(baseline: Outputs | None, outputs: Outputs) -> dict[str, float | None]:
    """Largest absolute difference and lowest cosine over the outputs, against the baseline environment."""
    if baseline is None:
        return {"drift_max_abs": None, "drift_cosine": None}
    stats = [error_stats(ref, outputs[n]) for n, ref in baseline.items() if n in outputs and comparable(ref, outputs[n])]
    if len(stats) != len(baseline):
        return {"drift_max_abs": None, "drift_cosine": None}
    return {"drift_max_abs": max((s.max_abs for s in stats), default=0.0),
            "drift_cosine": min((s.cosine for s in stats), default=1.0)}


def _identical(a: Outputs, b: Outputs) -> bool:
    return a.keys() == b.keys() and all(identical(a[n], b[n]) for n in a)


def _judged(ctx: ValidationContext, env: str, outputs: Outputs, baseline: Outputs | None,
            passed: bool | None = None, detail: str = "", group: str = "", level: float | None = None,
            note: str = "") -> Check:
    """The check of one environment: its outputs against the original's (``passed`` overrides the tolerance, and
    ``detail`` the failures; ``note`` goes before the failures)."""
    verification = Verifier.compare(ctx.reference(), outputs, ctx.tolerance, "original", ctx.kinds)
    worst = min(verification.stats.values(), key=lambda s: s.cosine, default=None)
    metrics: dict[str, float | None] = {"cosine": worst.cosine if worst else None, "top1": worst.top1 if worst else None,
                                        **_drift(baseline, outputs)}
    verdict = verification.passed if passed is None else passed
    return Check(env, verdict, metrics, detail or "; ".join([*([note] if note else []), *verification.failures]),
                 group, level)


def _run(ctx: ValidationContext, runtime: RuntimeConfig) -> Outputs | str:
    """The optimised model's held-out outputs under ``runtime``, or why onnxruntime could not produce them (a
    fallback to the CPU from a provider that failed to start is one such reason: the provider never ran the model)."""
    wanted = runtime.providers[0]
    if wanted not in ort.get_available_providers():
        return f"execution provider {wanted} is not in this onnxruntime ({', '.join(ort.get_available_providers())})"
    try:
        session = create_session(ctx.optimized, runtime)
        outputs, _ = run_dataset(session, ctx.held_out, runtime, progress=ctx.progress, label=f"optimized {wanted}")
    except GraphoptError as e:
        return first_line(e)
    except ORT_ERRORS as e:  # a run that fails (create_session already turned load failures into GraphoptError)
        return f"onnxruntime failed to run the model: {first_line(e)}"
    return outputs


def _stack_like(parts: list[np.ndarray], reference: Output | None, batchable: bool) -> Output:
    """Per-sample results in ``run_dataset``'s layout: concatenated along the batch axis, or stacked on a new one,
    or a ``RaggedOutput`` when the samples' shapes differ.

    With the reference the layout is the one that gives it; without, a batchable dataset's outputs that keep a
    leading axis of 1 (the batch of one sample) are concatenated, as ``run_dataset`` does in batches.
    """
    shape = reference.shape if isinstance(reference, np.ndarray) else None
    in_batches = all(p.ndim and p.shape[0] == 1 for p in parts) and (
        batchable if reference is None else shape is not None and len(shape) == parts[0].ndim)
    if isinstance(reference, RaggedOutput) or len({p.shape for p in parts}) > 1:
        return RaggedOutput(tuple(p[0] for p in parts)) if in_batches else stack_samples(parts)
    if shape is None:
        return np.concatenate(parts, axis=0) if parts and in_batches else np.stack(parts)
    joined = np.concatenate(parts, axis=0) if parts and parts[0].ndim else np.stack(parts)
    return joined if joined.shape == shape else np.stack(parts)


@dataclass(frozen=True)
class OpenVinoRun:
    """A model's outputs from OpenVINO's CPU plugin, and the floating-point precision it ran in: read back from the
    compiled model (``graphopt.openvino.inference_precision``), not the one asked for."""

    outputs: Outputs
    precision: str


def openvino_run(model: onnx.ModelProto, dataset: Dataset, reference: Outputs | None = None,
                 config: Mapping[str, Any] | None = None) -> OpenVinoRun:
    """``model`` compiled by OpenVINO for its CPU plugin with the properties ``config`` (none: its defaults, what a
    user gets on this CPU; ``graphopt.openvino.F32_CONFIG`` pins f32), run one sample at a time, its outputs laid out
    as ``run_dataset`` lays out onnxruntime's so the two compare directly.

    ``reference`` (onnxruntime's outputs of the same samples) fixes the output names and layout; without it, the
    graph's outputs in the layout ``_stack_like`` infers. Needs ``openvino``; raises whatever OpenVINO raises.
    """
    names = list(reference) if reference is not None else [o.name for o in model.graph.output]
    compiled = compile_cpu(model, config)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed, _ in dataset.batches(1, per_sample=True):
        result = compiled(feed)
        for name, chunks in parts.items():
            chunks.append(np.asarray(result[compiled.output(name)]))
    outputs: Outputs = {name: _stack_like(chunks, (reference or {}).get(name), dataset.batchable)
                        for name, chunks in parts.items()}
    return OpenVinoRun(outputs, inference_precision(compiled))


def openvino_outputs(model: onnx.ModelProto, dataset: Dataset, reference: Outputs | None = None,
                     config: Mapping[str, Any] | None = None) -> Outputs:
    """The outputs of ``openvino_run`` (same arguments): at OpenVINO's default precision for this CPU unless
    ``config`` pins one."""
    return openvino_run(model, dataset, reference, config).outputs


def _openvino_checks(ctx: ValidationContext, baseline: Outputs | None) -> tuple[list[Check], str | None]:
    """``openvino`` (OpenVINO's defaults) and ``openvino precision=f32``, each judged by the tolerance, and the
    precision OpenVINO picked by default here (``None`` when it could not compile the model).

    The f32 check is judged, not informational: the model runs in f32 wherever it is deployed on a CPU without
    native bf16, whichever CPU validates it, so it must meet the tolerance there too.

    Where the default is already f32 the f32 check is that same run (compiling twice would run the same kernels);
    where it is not, the model is compiled again with f32 pinned. A default that breaks the tolerance while f32
    keeps it says so: the model ships to OpenVINO with ``INFERENCE_PRECISION_HINT: f32``.
    """
    try:
        default = openvino_run(ctx.optimized, ctx.held_out, ctx.reference())
    except Exception as e:  # noqa: BLE001 - OpenVINO raises many unrelated types; a failure is the finding
        return [Check(OPENVINO, False, {}, f"OpenVINO cannot run the model: {openvino_reason(e)}", "openvino")], None
    check = _judged(ctx, OPENVINO, default.outputs, baseline, group="openvino",
                    note=f"inference precision {default.precision}: OpenVINO's default on this CPU")
    if default.precision == "f32":
        pinned, note = default, "inference precision f32: the default here, same run as 'openvino'"
    else:
        try:
            pinned = openvino_run(ctx.optimized, ctx.held_out, ctx.reference(), F32_CONFIG)
        except Exception as e:  # noqa: BLE001 - as above
            return [check, Check(OPENVINO_F32, False, {}, "OpenVINO cannot run the model with f32 pinned: "
                                 f"{openvino_reason(e)}", "openvino")], default.precision
        note = f"inference precision {pinned.precision}, pinned: OpenVINO's default without bf16"
    f32 = _judged(ctx, OPENVINO_F32, pinned.outputs, baseline, group="openvino", note=note)
    if check.passed is False and f32.passed:
        check = replace(check, detail=f"{check.detail}; passes with f32 pinned (INFERENCE_PRECISION_HINT: f32)")
    return [check, f32], default.precision


def check_environments(ctx: ValidationContext, environments: Sequence[Environment] | None = None) -> Section:
    """One check per environment (``default_environments`` unless given), OpenVINO when it is installed (at its
    default precision for this CPU, and with f32 pinned), and ``repeat``: the baseline run twice must give
    bit-identical outputs."""
    section = Section("environments", "Stability across environments")
    base = baseline_runtime(ctx.runtime)
    baseline = _run(ctx, base)
    clean = baseline if not isinstance(baseline, str) else None
    for env in default_environments(ctx.runtime) if environments is None else environments:
        outputs = baseline if env.runtime == base else _run(ctx, env.runtime)
        if isinstance(outputs, str):
            section.checks.append(Check(env.name, False, {}, outputs, env.group, env.level))
        else:
            section.checks.append(_judged(ctx, env.name, outputs, clean, group=env.group, level=env.level))
    installed = unavailable() is None
    openvino, precision = _openvino_checks(ctx, clean) if installed else ([], None)
    section.checks.extend(openvino)
    again = _run(ctx, base)
    if isinstance(again, str) or clean is None:
        section.checks.append(Check("repeat", False, {}, again if isinstance(again, str) else str(baseline), "repeat"))
    else:
        same = _identical(clean, again)
        section.checks.append(_judged(ctx, "repeat", again, clean, passed=same, group="repeat",
                                      detail="" if same else "two runs of the baseline differ bit-wise"))
    found = "not installed" if not installed else "installed" + (
        f", default inference precision {precision} on this CPU" if precision else "")
    section.notes.append(f"execution providers found: {', '.join(ort.get_available_providers())}; OpenVINO: {found}")
    section.notes.append(f"drift is measured against the optimised model on CPU, one thread, graph optimisation "
                         f"'{base.graph_optimization}'; every environment is judged against the original with the "
                         "tolerance (OpenVINO at its default precision for this CPU and with f32 pinned), and "
                         "'repeat' must be bit-identical")
    return section
