"""Do graphopt's verdicts hold on samples it never saw? Every lossy pass on every real model, re-judged on fresh
samples (issue 17).

Usage:
    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/bench_fresh.py                                   # every model, every lossy pass
    python benchmarks/bench_fresh.py --models ddddocr,ppocr_det --passes weight-clustering,qdq-int8 --out /tmp/b

Each workload's real samples (``workloads.py``) are split three ways with a fixed seed: 40% calibration, 30%
verification, 30% fresh. ``graphopt.optimize`` gets the first 70% and ``calibration_fraction=4/7``, so its own split
(``Dataset.split``, seed 0) fits passes on the calibration part and judges them on the verification part; the fresh
part is never shown to it. Every lossy pass (``graphopt.list_passes()``, ``lossless`` false) runs alone with its
default options under graphopt's default budget. Each result graphopt accepts (status ``applied`` or ``narrowed``)
is run with onnxruntime beside the original, on the verification part and on the fresh part, and judged here on
the means, with the same budget (mean per-sample cosine ≥ 0.99 on every float output, top-1 agreement ≥ 0.99 along
each output's class axis and mask IoU ≥ 0.99 of probability maps, as graphopt reads them from the graph and the
workload's ``output_kinds``, integer outputs exact) plus, whatever graphopt was told, the head's own figure:

- CTC sequence heads (ddddocr, PP-OCR rec; ``[samples, positions, (1,) classes]``): per-position top-1, the
  agreement of the arg-max over the class axis at every position, ≥ 0.99; shown with the share of samples whose
  CTC-decoded sequence (repeats merged, blank 0 dropped) is unchanged.
- Probability maps (PP-OCR det): the mean mask IoU at rapidocr's threshold 0.3 (1 where both masks are empty),
  ≥ 0.99; shown with the share of pixels on the same side of the threshold and of empty reference maps that stay
  empty.
- Decision outputs (silero): agreement of the ≥ 0.5 decision, ≥ 0.99, as ``harness.py`` judges it.

Writes ``<out>/fresh-<date>.md`` and ``.json`` (default ``benchmarks/results``) with the machine description, after
every model (so a long run keeps what it measured). Not part of CI.
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from harness import error_text, num, write
from workloads import CTC, LOADERS, MAP_THRESHOLD, PROBABILITY_MAP, ROOT, Workload, load_workloads, machine

import graphopt
from graphopt.api import graphopt_version
from graphopt.data import Dataset
from graphopt.outputs import RaggedOutput
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import HEURISTIC, ErrorStats, error_stats, per_sample_iou
from graphopt.verify.output_kinds import OutputKind, output_kinds

__all__ = ["Figures", "PassRow", "fidelity", "main"]

log = logging.getLogger("benchmarks")

SHARES = (0.4, 0.3, 0.3)
"""Calibration, verification, fresh."""
COSINE, TOP1, AGREEMENT = 0.99, 0.99, 0.99
"""The default budget (``Tolerance.budget()``), judged on means; ``AGREEMENT`` bounds the head metrics."""
ACCEPTED = ("applied", "narrowed")


@dataclass
class Figures:
    """One model against the original on one split: the budget's figures and the head's."""

    samples: int
    cosine: float
    cosine_min: float
    top1: float | None
    head: float | None = None  # per-position top-1, pixel agreement at the threshold, or decision agreement
    extra: dict[str, float] = field(default_factory=dict)  # sequences equal; mask IoU, empty maps kept empty
    within_budget: bool = True
    failures: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class PassRow:
    model: str
    name: str
    status: str
    reason: str = ""
    error: str = ""
    graphopt: dict[str, Any] = field(default_factory=dict)  # the pass record's ``worst``
    verification: Figures | None = None
    fresh: Figures | None = None
    optimize_seconds: float = 0.0
    judge_seconds: float = 0.0


@dataclass
class ModelRun:
    name: str
    title: str
    data_note: str
    head: str
    samples: int
    calibration: int
    verification: int
    fresh: int
    rows: list[PassRow]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------ metrics


def _positions(output: np.ndarray) -> np.ndarray:
    """A CTC head's arg-max class at every position, [samples, positions] (a size-1 batch axis folded away)."""
    return np.argmax(output, axis=-1).reshape(len(output), -1)


def _decoded_equal(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per sample, whether the CTC-decoded sequences (repeats merged, blank 0 dropped) are the same."""
    def decode(row: np.ndarray) -> tuple[int, ...]:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        return tuple(int(k) for k in row[keep] if k != 0)
    return np.array([decode(r) == decode(g) for r, g in zip(ref, got, strict=True)])


def _map_figures(ref: np.ndarray, got: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample: share of pixels on the same side of the threshold, mask IoU (1 when both are empty), and
    whether the reference mask is empty."""
    a = ref.reshape(len(ref), -1) > MAP_THRESHOLD
    b = got.reshape(len(got), -1) > MAP_THRESHOLD
    iou = per_sample_iou(ref, got, MAP_THRESHOLD)
    return {"agree": (a == b).mean(axis=1), "iou": iou, "ref_empty": ~a.any(axis=1), "got_empty": ~b.any(axis=1)}


def _head(w: Workload, ref: Mapping[str, Any], got: Mapping[str, Any], mask: np.ndarray | None = None
          ) -> tuple[float | None, dict[str, float]]:
    """The head metric (and its companions) of the samples in ``mask`` (all when ``None``)."""
    pick = (lambda a: a) if mask is None else (lambda a: a[mask])
    if w.head == CTC:
        r, g = _positions(pick(np.asarray(ref[w.main_output]))), _positions(pick(np.asarray(got[w.main_output])))
        return float(np.mean(r == g)), {"sequences_equal": float(np.mean(_decoded_equal(r, g)))}
    if w.head == PROBABILITY_MAP:
        f = _map_figures(pick(np.asarray(ref[w.main_output])), pick(np.asarray(got[w.main_output])))
        empty = f["ref_empty"]
        kept = float(np.mean(f["got_empty"][empty])) if empty.any() else math.nan
        return float(np.mean(f["iou"])), {"pixels_agreeing": float(np.mean(f["agree"])), "empty_kept_empty": kept,
                                          "empty_reference_maps": float(empty.sum())}
    if w.decision_output is not None:
        r, g = (pick(np.asarray(o[w.decision_output])).reshape(-1) >= 0.5 for o in (ref, got))
        return float(np.mean(r == g)), {}
    return None, {}


def _budget_failures(stats: Mapping[str, ErrorStats]) -> list[str]:
    """What breaks the default budget, judged on the means (no confidence bounds)."""
    failures = []
    for name, s in stats.items():
        if s.nonfinite_mismatch or s.shape_mismatches:
            failures.append(f"{name}: {s.nonfinite_mismatch} non-finite, {s.shape_mismatches} shape mismatches")
        elif s.exact:
            if s.mismatches:
                failures.append(f"{name}: {s.mismatches} integer mismatches")
        else:
            if s.cosine < COSINE:
                failures.append(f"{name}: cosine {s.cosine:.4f} < {COSINE}")
            if s.top1 is not None and s.top1 < TOP1:
                failures.append(f"{name}: top-1 {s.top1:.4f} < {TOP1}")
            if s.iou is not None and s.iou < AGREEMENT:
                failures.append(f"{name}: mask IoU {s.iou:.4f} < {AGREEMENT}")
    return failures


_HEAD_NAMES = {CTC: "per-position top-1", PROBABILITY_MAP: f"mask IoU at {MAP_THRESHOLD}"}


def fidelity(w: Workload, ref: Mapping[str, Any], got: Mapping[str, Any],
             groups: Mapping[str, np.ndarray]) -> Figures:
    """``got`` against the original's ``ref`` on one split: the budget on every output, the head metric, and the
    main output's cosine and head metric per group of samples (``groups``: masks over this split)."""
    kinds = output_kinds(w.model, w.output_kinds)
    stats = {name: _stats(ref[name], got[name], kinds.get(name)) for name in ref}
    main = stats[w.main_output]
    head, extra = _head(w, ref, got)
    failures = _budget_failures(stats)
    if head is not None and head < AGREEMENT:
        label = _HEAD_NAMES.get(w.head, "decision agreement")
        failures.append(f"{w.main_output if w.head else w.decision_output}: {label} {head:.4f} < {AGREEMENT}")
    by_group: dict[str, dict[str, float | None]] = {}
    for name, mask in groups.items():
        if mask.any() and not isinstance(ref[w.main_output], RaggedOutput):
            cosine = error_stats(np.asarray(ref[w.main_output])[mask], np.asarray(got[w.main_output])[mask]).cosine
            group_head, group_extra = _head(w, ref, got, mask)
            by_group[name] = {"samples": float(mask.sum()), "cosine": cosine, "head": group_head, **group_extra}
    return Figures(main.n_samples, main.cosine, main.cosine_min, main.top1, head, extra, not failures, failures,
                   by_group)


def _stats(ref: Any, got: Any, kind: OutputKind | None) -> ErrorStats:
    """The figures of one output as graphopt judges it (class axis and mask from its kind), without bounds."""
    return error_stats(ref, got, class_axis=kind.class_axis if kind else HEURISTIC,
                       mask_threshold=kind.mask_threshold if kind else None)


# -------------------------------------------------------------------------------------------------------- run


def three_way(data: Dataset, seed: int) -> tuple[Dataset, Dataset, Dataset, float, np.ndarray, np.ndarray]:
    """(seen, verification, fresh, calibration fraction, verification indices, fresh indices): ``seen`` is what
    graphopt gets (calibration + verification), split by graphopt itself with the returned fraction."""
    n = data.n_samples
    order = np.random.default_rng(seed).permutation(n)
    n_fresh = round(n * SHARES[2])
    fresh_idx, seen_idx = np.sort(order[:n_fresh]), np.sort(order[n_fresh:])
    fraction = SHARES[0] / (SHARES[0] + SHARES[1])
    seen = data.subset(seen_idx)
    position = Dataset({"i": seen_idx}, frozenset(), batchable=True)
    _, verification_positions = position.split(fraction)  # graphopt's own split of ``seen`` (seed 0)
    verification_idx = np.asarray(verification_positions.arrays["i"])
    return seen, data.subset(verification_idx), data.subset(fresh_idx), fraction, verification_idx, fresh_idx


def _status(record: Any) -> str:
    if record.status == "narrowed":
        left = sum(1 for u in record.units if not u.get("applied"))
        return f"narrowed ({left} of {len(record.units)} units left out)"
    return str(record.status)


def run_model(w: Workload, passes: list[str], seed: int) -> ModelRun:
    start = time.perf_counter()
    seen, verification, fresh, fraction, verification_idx, fresh_idx = three_way(w.data, seed)
    config = RuntimeConfig()
    log.warning("[%s] original on %d verification and %d fresh samples …", w.name, verification.n_samples,
                fresh.n_samples)
    session = create_session(w.model, config)
    ref_verification, per_sample_v = run_dataset(session, verification, config)
    ref_fresh, per_sample_f = run_dataset(session, fresh, config)
    del session
    groups_v = {k: m[verification_idx] for k, m in w.groups.items()}
    groups_f = {k: m[fresh_idx] for k, m in w.groups.items()}
    run = ModelRun(w.name, w.title, w.data_note, w.head, w.data.n_samples, seen.n_samples - verification.n_samples,
                   verification.n_samples, fresh.n_samples, [])
    for name in passes:
        log.warning("[%s] %s …", w.name, name)
        t0 = time.perf_counter()
        try:
            result = graphopt.optimize(w.model, seen, passes=name, calibration_fraction=fraction,
                                       output_kinds=w.output_kinds)
        except Exception as e:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
            run.rows.append(PassRow(w.name, name, "error", error=error_text(e),
                                    optimize_seconds=time.perf_counter() - t0))
            log.warning("[%s] %s: error %s", w.name, name, error_text(e))
            continue
        record = result.report.record(name)
        row = PassRow(w.name, name, _status(record), record.reason, graphopt=dict(record.worst or {}),
                      optimize_seconds=time.perf_counter() - t0)
        run.rows.append(row)
        if record.status in ACCEPTED:
            t1 = time.perf_counter()
            try:
                row.verification, row.fresh = _judge(w, result.model, config, (verification, ref_verification,
                                                     per_sample_v, groups_v), (fresh, ref_fresh, per_sample_f,
                                                                               groups_f))
            except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run is a row, not a crash
                row.error = f"re-judging: {error_text(e)}"
            row.judge_seconds = time.perf_counter() - t1
        log.warning("[%s] %s: %s in %.0f s%s", w.name, name, row.status, row.optimize_seconds,
                    "" if row.fresh is None else f"; fresh {'within' if row.fresh.within_budget else 'OUTSIDE'} "
                    f"budget ({'; '.join(row.fresh.failures) or 'ok'})")
        del result
    run.seconds = time.perf_counter() - start
    return run


def _judge(w: Workload, model: onnx.ModelProto, config: RuntimeConfig, *splits: tuple[Dataset, Any, bool, Any]
           ) -> tuple[Figures, Figures]:
    session = create_session(model, config)
    figures = []
    for data, ref, per_sample, groups in splits:
        got, _ = run_dataset(session, data, config, per_sample=per_sample)
        figures.append(fidelity(w, ref, got, groups))
    return figures[0], figures[1]


# ------------------------------------------------------------------------------------------------------ report


def _framework() -> dict[str, Any]:
    """Where graphopt was imported from and, for a git checkout, its commit and modified framework files."""
    folder = Path(graphopt.__file__).resolve().parent.parent
    info: dict[str, Any] = {"path": str(folder), "version": graphopt_version()}
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "graphopt", "passes"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return info | {"git": None}
    return info | {"git": commit, "modified": [line[3:] for line in dirty]}


def _head_cell(w_head: str, f: Figures | None, decision: bool) -> str:
    if f is None or f.head is None:
        return "–"
    if w_head == CTC:
        return f"{f.head:.4f} ({f.extra['sequences_equal']:.3f})"
    if w_head == PROBABILITY_MAP:
        kept = f.extra["empty_kept_empty"]
        return f"{f.head:.4f} ({f.extra['pixels_agreeing']:.4f}; {num(kept, 3)})"
    return f"{f.head:.4f}" if decision else "–"


_HEAD_HEADERS = {
    CTC: "per-position top-1 (sequences equal)",
    PROBABILITY_MAP: f"mask IoU at {MAP_THRESHOLD} (pixels agreeing; empty maps kept empty)",
}


def _bound(record: Mapping[str, Any], key: str, digits: int) -> str:
    return num(record.get(key), digits) if key in record else "–"


def _rows(run: ModelRun, decision: bool) -> list[str]:
    head = _HEAD_HEADERS.get(run.head, "decision agreement" if decision else "")
    mask = run.head == PROBABILITY_MAP
    header = ["pass", "graphopt status", "graphopt: cosine", "cosine_low", *(["IoU", "IoU_low"] if mask else
                                                                            ["top-1", "top-1_low"]),
              "here, verification: cosine / top-1", *([f"verification: {head}"] if head else []), "fresh: cosine (mean / min)",
              "fresh: top-1", *([f"fresh: {head}"] if head else []), "fresh within budget", "seconds (optimize + judge)"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 4) + "---|---:|"]
    for r in run.rows:
        g = r.graphopt
        cells = [r.name, r.status if not r.error or r.status != "error" else f"**error**: {r.error[:100]}",
                 num(g.get("cosine"), 5), _bound(g, "cosine_low", 5),
                 *((num(g.get("iou"), 4), _bound(g, "iou_low", 4)) if mask else
                   (num(g.get("top1"), 4), _bound(g, "top1_low", 4)))]
        v, f = r.verification, r.fresh
        cells.append(f"{num(v.cosine, 5)} / {num(v.top1, 4)}" if v else "–")
        if head:
            cells.append(_head_cell(run.head, v, decision))
        cells += [f"{num(f.cosine, 5)} / {num(f.cosine_min, 4)}" if f else "–", num(f.top1, 4) if f else "–"]
        if head:
            cells.append(_head_cell(run.head, f, decision))
        cells.append("–" if f is None else "yes" if f.within_budget else "**no**: " + "; ".join(f.failures))
        cells.append(f"{r.optimize_seconds:.0f} + {r.judge_seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _group_lines(run: ModelRun) -> list[str]:
    lines = []
    for r in run.rows:
        if r.fresh is None or not r.fresh.groups:
            continue
        parts = []
        for name, g in r.fresh.groups.items():
            text = f"{name} ({int(g['samples'] or 0)}): cos {num(g['cosine'], 4)}, {num(g['head'], 4)}"
            if run.head == PROBABILITY_MAP:
                text += f", pixels agreeing {num(g['pixels_agreeing'], 4)}"
            elif run.head == CTC:
                text += f", sequences equal {num(g['sequences_equal'], 3)}"
            parts.append(text)
        lines.append(f"- {r.name}, fresh by kind of input: " + "; ".join(parts))
    return lines


METHOD = (
    "How it was measured: each model's samples are split 40/30/30 (seed {seed}) into calibration, verification and "
    "fresh samples; graphopt gets the first two (``calibration_fraction`` 4/7, so its own split is exactly "
    "them) and never sees the fresh ones. *graphopt: …*: the pass record's ``worst`` output on graphopt's "
    "verification split (``cosine_low``/``top1_low``: its lower confidence bounds, – where this graphopt has "
    "none). *here, …*: the accepted model against the original, run here with onnxruntime (default graph "
    "optimisations) on the verification and the fresh samples, main output. *within budget*: mean cosine ≥ "
    "0.99 on every float output, top-1 ≥ 0.99 along each output's class axis and mask IoU ≥ 0.99 of probability "
    "maps (as graphopt reads them from the graph and the workload's output kinds), integers exact, and the head "
    "metric ≥ 0.99 (per-position top-1 for CTC heads, mask IoU at 0.3 for probability maps, the ≥ 0.5 decision "
    "for silero), judged on the means."
)


def render(runs: list[ModelRun], info: dict[str, Any], framework: dict[str, Any], command: str, wall: float,
           skipped: Mapping[str, str], seed: int, decisions: Mapping[str, bool]) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    where = framework["path"] + (f" (git {framework['git'][:10]}, "
                                 f"{len(framework['modified'])} framework files modified)" if framework.get("git")
                                 else " (not a git checkout)")
    accepted = [(run, r) for run in runs for r in run.rows if r.fresh is not None]
    failing = [(run, r) for run, r in accepted if not r.fresh.within_budget]  # type: ignore[union-attr]
    blind = [(run, r) for run, r in failing if r.verification is not None and not r.verification.within_budget]
    lines = [f"# graphopt's verdicts on fresh samples ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
              f"graphopt {info['graphopt']}, Python {info['python']}; framework imported from {where}"),
             f"- command: `{command}`; wall time {wall:.0f} s", "", METHOD.format(seed=seed), "", "## Summary", "",
             (f"**{len(failing)} of {len(accepted)} accepted results fail the budget on fresh samples**"
              + (f": {len(blind)} of them fail it, judged here, on graphopt's own verification samples already "
                 "(by a figure graphopt does not judge there, such as per-position top-1), "
                 f"{len(failing) - len(blind)} on the fresh samples only" if failing else "") + "."), ""]
    lines += [f"- {run.title} × {r.name}: fresh: " + "; ".join(r.fresh.failures)  # type: ignore[union-attr]
              + (f"; verification: {'; '.join(r.verification.failures) or 'within budget'}" if r.verification
                 else "") for run, r in failing]
    slow = sorted((r.optimize_seconds + r.judge_seconds, run.name, r.name) for run in runs for r in run.rows)[-3:]
    lines += ["", "Slowest combinations: " + ", ".join(f"{m} × {p} {s:.0f} s" for s, m, p in reversed(slow)), ""]
    for run in runs:
        lines += [f"## {run.title}", "",
                  (f"{run.data_note}. Samples {run.samples}: calibration {run.calibration}, verification "
                   f"{run.verification}, fresh {run.fresh}; {run.seconds:.0f} s."), "",
                  *_rows(run, decisions.get(run.name, False)), ""]
        notes = _group_lines(run) + [f"- {r.name}: {r.reason}" for r in run.rows
                                     if r.reason and r.fresh is None] + [f"- {r.name}: error: {r.error}"
                                                                         for r in run.rows if r.error]
        lines += [*notes, ""] if notes else []
    lines += [f"- skipped model {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    lossy = [name for name, cls in graphopt.list_passes().items() if not cls.lossless]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(LOADERS), help=f"comma-separated, of {', '.join(LOADERS)}")
    parser.add_argument("--passes", default=",".join(lossy), help=f"comma-separated, of {', '.join(lossy)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the three-way split")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for .md and .json")
    args = parser.parse_args()
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    unknown = [p for p in passes if p not in lossy]
    if unknown:
        parser.error(f"not a lossy pass: {', '.join(unknown)} (choose from {', '.join(lossy)})")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.ERROR)
    log.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    command = f"python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".strip()
    framework = _framework()
    start = time.perf_counter()
    runs: list[ModelRun] = []
    skipped: dict[str, str] = {}
    decisions: dict[str, bool] = {}
    for w in load_workloads(args.models, skipped):
        decisions[w.name] = w.decision_output is not None
        runs.append(run_model(w, passes, args.seed))
        del w
        wall = time.perf_counter() - start
        info = machine()
        markdown = render(runs, info, framework, command, wall, skipped, args.seed, decisions)
        write(args.out, "fresh", markdown, {
            "schema": "graphopt.bench-fresh/1", "machine": info, "framework": framework, "command": command,
            "wall_seconds": wall, "seed": args.seed, "shares": SHARES, "skipped_models": skipped,
            "models": [asdict(r) for r in runs]})
    print(markdown if runs else "no model could be loaded")
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
