"""The pass manager: (pass → check → verify → accept | narrow | roll back)* over a pipeline of ``PassBase`` objects.

Every pass gets a copy of the last accepted model. A modified result must pass ``onnx.checker`` and load in
onnxruntime, and its outputs on the verification samples, run where the pass says its result runs
(``PassBase.verified_in``: onnxruntime, or OpenVINO's CPU plugin when installed), must stay within the budget
tolerance against the ORIGINAL model (and, for lossless passes, within the lossless tolerance against the model
before the pass). A pass
that fails and offers units is narrowed to the largest subset of units that passes. Units are ranked by their damage
applied alone, measured on calibration samples with every unit's candidate in one model (``graphopt.sensitivity``;
a pass's own estimate stands in beyond ``MEASURED_UNITS``; a stronger level of a layer is scaled from its mildest
level's damage by the pass's estimates of both), per unit of gain when every unit states one. The longest
passing prefix is found by bisection, and the remaining units are then tried one at a time, except those that harm
the outputs alone at least as much as one that already broke the budget with fewer units kept. Anything else is
rolled back. A search's trials are screened on the first verification samples (``verify.screening``): a candidate
that clearly fails there goes no further; only a verification on every sample accepts. A narrowed set is chosen
among the candidates judged on the same verification samples, so a search makes at most ``search_trials`` of them
(the bisection's steps and twice as many retries) and judges each at the confidence that covers them all
(``selection_confidence``), so that whatever it keeps holds at it; the kept set is reported as judged at the pass's
own confidence. A pass that serves latency has its final candidate timed once against the model before it
(``graphopt.gates``), with its speed variants (``PassBase.speed_variants``) rebuilt on the units kept, verified, and
timed in the same call; the fastest verified one is kept. The manager names no pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import onnx

from graphopt import openvino
from graphopt.errors import GraphoptError, PreconditionError, UnsupportedModelError, first_line
from graphopt.gates import TIMERS, Timer, judge_speed, resolve
from graphopt.graph import copy_model, free_copies
from graphopt.instrument import Instrument
from graphopt.modelio import check_model
from graphopt.outcome import PassOutcome, PipelineResult, Status, UnitOutcome
from graphopt.outputs import Outputs
from graphopt.pass_base import PassBase, PassContext, PassResult, Unit
from graphopt.runtime import Session
from graphopt.sensitivity import measure_alone
from graphopt.verify.screening import RANK_SAMPLES, SCREEN_SAMPLES, Screen, screen_stages, screen_verification
from graphopt.verify.tolerance import Tolerance, selection_confidence
from graphopt.verify.verifier import Verification, Verifier

__all__ = ["MEASURED_UNITS", "PassManager", "rank_order", "search_trials"]

log = logging.getLogger(__name__)

MEASURED_UNITS = 96
"""Up to this many units, a search measures every unit's damage alone (``graphopt.sensitivity``), which ranks units
better than a pass's own estimate; beyond it, only the units without an estimate are measured."""


@dataclass
class _Trial:
    result: PassResult | None
    verifications: tuple[Verification, ...] = ()
    outputs: Outputs | None = None
    error: str = ""
    raised: bool = False
    screen: Screen | None = None
    """Why the candidate clearly fails on the first verification samples, where a search's screen stopped it."""
    dropped: bool = False
    """Only the verdict is kept (``without_candidate``): the candidate model and its outputs were let go."""

    def without_candidate(self) -> _Trial:
        """This trial as a search remembers it once it is not the kept candidate: its verdict, without the candidate
        model (an int4 GPT-2's inline weights are hundreds of MB a trial) or its outputs."""
        if self.result is None:
            return replace(self, outputs=None, dropped=True)
        return replace(self, result=replace(self.result, model=onnx.ModelProto()), outputs=None, dropped=True)

    @property
    def passed(self) -> bool:
        """Changed the model, which loads and holds the budget on every verification sample. A trial that changed
        nothing passes nothing: in narrowing, a unit the pass declined is not a harmless one. A screened trial that
        went no further passes nothing either: only a full verification accepts."""
        return (self.changed and not self.error and bool(self.verifications)
                and all(v.passed for v in self.verifications))

    @property
    def changed(self) -> bool:
        return self.result is not None and self.result.modified

    @property
    def failure(self) -> str:
        if self.error:
            return self.error
        if not self.changed:
            return "changes nothing"
        if self.screen is not None and self.screen.failure:
            return f"{self.screen.failure} (vs original)"
        return next((f"{v.failures[0]} (vs {v.against})" for v in self.verifications if not v.passed), "")


@dataclass
class PassManager:
    """Runs passes with verification; see the module docstring for the rules."""

    verifier: Verifier
    context: PassContext = field(default_factory=PassContext)
    tolerance: Tolerance = field(default_factory=Tolerance.budget)
    lossless_tolerance: Tolerance = field(default_factory=Tolerance.lossless)
    instruments: Sequence[Instrument] = ()
    max_trials: int = 64
    timers: Mapping[str, tuple[str, Timer]] = field(default_factory=lambda: dict(TIMERS))
    speed_gate: bool = True
    """Time latency passes' results (``graphopt.gates``); off where only the accuracy verdict matters."""
    deadline: float | None = None
    """A ``time.monotonic()`` after which a narrowing search makes no further trial and keeps the largest set of
    units verified so far (``--goal``'s time budget)."""

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def run(self, model: onnx.ModelProto, passes: Sequence[PassBase],
            budgets: Mapping[PassBase, Tolerance] | None = None, previous: Outputs | None = None) -> PipelineResult:
        """Run ``passes`` in order on ``model``; a pass in ``budgets`` is held to its own tolerance against the
        original (a share of the budget, ``Tolerance.share``, so that the passes after it find some left), the rest
        to ``tolerance``. ``previous`` holds ``model``'s outputs when it is not the original (an earlier run's
        result, continued): lossless passes are judged against them."""
        for instrument in self.instruments:
            instrument.before_pipeline(model)
        outcomes = []
        previous = self.verifier.reference if previous is None else previous
        for pass_ in passes:
            for instrument in self.instruments:
                instrument.before_pass(pass_, model)
            started = time.perf_counter()
            runner = replace(self, tolerance=budgets[pass_]) if budgets and pass_ in budgets else self
            with self.verifier.progress.task(f"pass {pass_.name}", 1) as done:  # names the pass above its steps
                outcome, outputs = runner._run_pass(pass_, model, previous)
                done(1)
            outcome = replace(outcome, seconds=time.perf_counter() - started)
            log.info("%s: %s %s", pass_.name, outcome.status.value, outcome.reason)
            for instrument in self.instruments:
                instrument.after_pass(outcome)
            outcomes.append(outcome)
            model = outcome.model_after
            previous = outputs if outputs is not None else previous
        free_copies(model)
        result = PipelineResult(model, tuple(outcomes))
        for instrument in self.instruments:
            instrument.after_pipeline(result)
        return result

    def _run_pass(
        self, pass_: PassBase, model: onnx.ModelProto, previous: Outputs
    ) -> tuple[PassOutcome, Outputs | None]:
        def settle(status: Status, reason: str, trial: _Trial | None = None, ran: PassBase = pass_,
                   **extra: Any) -> PassOutcome:
            kept = status in (Status.APPLIED, Status.NARROWED) and trial is not None and trial.result is not None
            result = trial.result if trial else None
            if result is not None and not kept:  # facts only: a rejected candidate (gigabytes, maybe) is not kept alive
                result = replace(result, model=model)
            return PassOutcome(
                pass_name=pass_.name,
                options=asdict(ran.options),
                lossless=pass_.lossless,
                status=status,
                reason=reason,
                model_before=model,
                model_after=trial.result.model if kept else model,  # type: ignore[union-attr]
                result=result,
                verifications=trial.verifications if trial else (),
                **extra,
            )

        refusal = self._refusal(pass_)
        if refusal:
            return settle(Status.SKIPPED, refusal), None
        try:
            trial = self._attempt(pass_, model, previous, self.context)
        except PreconditionError as e:
            return settle(Status.SKIPPED, str(e)), None
        if trial.raised:
            return settle(Status.FAILED, trial.error, trial), None
        if not trial.changed and not trial.error:
            return settle(Status.SKIPPED, _nothing_to_change(trial.result), trial), None
        units: tuple[UnitOutcome, ...] = ()
        trials = 0
        if trial.passed:
            status, reason, kept = Status.APPLIED, "", trial
        else:
            trial = trial.without_candidate()  # a failed candidate serves nothing but its verdict: free it now
            narrowed, units, trials = self._narrow(pass_, model, previous)
            if narrowed is None:
                return settle(Status.ROLLED_BACK, trial.failure, trial, units=units, trials=trials), None
            left_out = sum(not u.applied for u in units)
            status, reason, kept = Status.NARROWED, f"{left_out} of {len(units)} units left out: {trial.failure}", narrowed
        kept_units = frozenset(u.name for u in units if u.applied) if status is Status.NARROWED else None
        ran, kept, declined = self._speed_gate(pass_, model, previous, kept, kept_units)
        if declined:
            return settle(Status.DECLINED, declined, kept, ran, units=units, trials=trials), None
        return settle(status, reason, kept, ran, units=units, trials=trials), kept.outputs

    def _speed_gate(self, pass_: PassBase, model: onnx.ModelProto, previous: Outputs, trial: _Trial,
                    kept_units: frozenset[str] | None) -> tuple[PassBase, _Trial, str]:
        """Time the pass's final candidate once against ``model`` when the pass serves latency, with its speed
        variants rebuilt on the units kept (``kept_units``; ``None``: all) and verified like any trial: the pass
        whose candidate timed fastest, that candidate with the measured ratio and the gate's notes added to its
        result, and why it is declined ("" to keep it)."""
        assert trial.result is not None
        check = resolve(pass_.speed_check()) if self.speed_gate and "latency" in pass_.serves() else None
        if check is None:
            return pass_, trial, ""
        notes = list(check.notes)
        declined, ran, chosen_trial, ratio = "", pass_, trial, None
        if check.mode != "off":
            variants: dict[str, tuple[PassBase, _Trial]] = {}
            for variant in pass_.speed_variants(trial.result):
                attempt = self._attempt(variant, model, previous, self.context.with_units(kept_units))
                if attempt.passed:
                    variants[repr(variant)] = variant, attempt
                else:
                    notes.append(f"{variant!r} not timed: {attempt.failure}")
            data = self.context.calibration
            data = data if data is not None and not data.synthetic and data.n_samples else self.verifier.data
            feed = next(data.batches(1, per_sample=True))[0]
            alternatives = [(label, alt.result.model) for label, (_, alt) in variants.items()
                            if alt.result is not None]
            labelled = replace(check, candidate=repr(pass_)) if alternatives else check
            with self.verifier.progress.task(f"time {pass_.name} against its input ({len(alternatives) + 2} "
                                             "models)", 1) as done:
                verdict = judge_speed(labelled, model, trial.result.model, feed, self.timers, alternatives)
                done(1)
            if verdict.chosen:
                ran, chosen_trial = variants[verdict.chosen]
            ratio, declined = verdict.ratio, verdict.declined
            notes.append(verdict.note)
        assert chosen_trial.result is not None
        stats = dict(chosen_trial.result.stats) | ({"latency_ratio": ratio} if ratio is not None else {})
        result = replace(chosen_trial.result, stats=stats, notes=(*chosen_trial.result.notes, *notes))
        return ran, replace(chosen_trial, result=result), declined

    def _refusal(self, pass_: PassBase) -> str:
        """Why the manager cannot verify ``pass_`` here (the pass's own preconditions are ``PassBase.__call__``'s)."""
        if not pass_.lossless and self.verifier.data.synthetic:
            return "lossy passes need real validation data (--data random only verifies lossless passes)"
        return ""

    def _attempt(
        self, pass_: PassBase, model: onnx.ModelProto, previous: Outputs, context: PassContext, *, screen: bool = False,
        tolerance: Tolerance | None = None,
    ) -> _Trial:
        """Run the pass on a copy of ``model``, check and verify it against the original within ``tolerance`` (the
        budget by default). ``PreconditionError`` propagates. A search's trial is first ``screen``ed on the first
        verification samples, and stops there when it clearly fails."""
        tolerance = tolerance or self.tolerance
        free_copies(model)
        work = copy_model(model)
        try:
            result = pass_(work, context)
        except PreconditionError:
            raise
        except Exception as e:  # a failing pass is reported as failed, whatever it raised; -v shows the traceback
            log.info("pass %s raised", pass_.name, exc_info=True)
            return _Trial(None, error=f"pass raised {type(e).__name__}: {first_line(e)}", raised=True)
        if not result.modified:
            return _Trial(result)
        free_copies(model)  # the pass's graphs (cycles) map every weight it read: gigabytes for a large model
        try:
            session: Session = check_model(result.model, self.verifier.runtime)
            if pass_.verified_in() == "openvino":
                session, note = _in_openvino(result.model, session)
                result = replace(result, notes=(*result.notes, note))
            run = self.verifier.candidate(result.model, f"verify {pass_.name}", session, tolerance)
            n = self.verifier.data.n_samples
            for stage in screen_stages(n, SCREEN_SAMPLES) if screen else ():
                run.first(stage)
                first = screen_verification(run.against_original(tolerance.at_confidence(None)),
                                            tuple(self.verifier.reference), stage, tolerance)
                if first.failure:
                    return _Trial(result, screen=first)
            outputs = run.outputs()
        except GraphoptError as e:
            return _Trial(result, error=str(e))
        checks = [run.against_original(tolerance)]
        if pass_.lossless and pass_.same_rounding:
            checks.insert(0, self.verifier.compare(previous, outputs, self.lossless_tolerance, "previous",
                                                   self.verifier.kinds))
        for check in checks:
            for instrument in self.instruments:
                instrument.after_verify(pass_, check)
        return _Trial(result, tuple(checks), outputs)

    def _narrow(
        self, pass_: PassBase, model: onnx.ModelProto, previous: Outputs
    ) -> tuple[_Trial | None, tuple[UnitOutcome, ...], int]:
        """Keep the largest subset of the pass's units that passes; ``(None, ...)`` if no unit does."""
        try:
            units = pass_.units(model, self.context)
        except Exception as e:  # noqa: BLE001 - narrowing is best effort: a pass bug here means no narrowing
            log.debug("units() of %s raised: %s", pass_.name, e)
            units = ()
        if not units:
            return None, (), 0
        with self.verifier.progress.task(f"narrow {pass_.name}: trials (at most)", self._most_trials(units)) as done:
            return self._search(pass_, model, previous, units, done)

    def _most_trials(self, units: Sequence[Unit]) -> int:
        """How many candidates a search among ``units`` can try at most: each measured unit alone, the bisection's
        steps and as many retries."""
        return len(_measured(units)) + min(self.max_trials, search_trials(len(units)))

    def _search(self, pass_: PassBase, model: onnx.ModelProto, previous: Outputs, units: Sequence[Unit],
                done: Callable[[int], None]) -> tuple[_Trial | None, tuple[UnitOutcome, ...], int]:
        """Rank ``units``, then bisect and retry them within ``search_trials``, each trial judged at the selection
        confidence of them all; ``done(1)`` after every unit ranked and every trial. Returns the kept trial (judged
        at the pass's own confidence), the units' outcomes and the candidates tried."""
        trials: dict[frozenset[str], _Trial] = {}

        def attempt(names: frozenset[str]) -> _Trial:
            """The trial of ``names``, run once. Only the latest passing trial keeps its model and outputs: it is the
            kept set so far (the bisection and the retries only ever extend it), so a search holds one candidate."""
            if names not in trials:
                try:
                    trial = self._attempt(pass_, model, previous, self.context.with_units(names), screen=True,
                                          tolerance=judge)
                except PreconditionError as e:
                    trial = _Trial(None, error=str(e))
                if trial.passed:
                    trials.update({key: t.without_candidate() for key, t in trials.items() if not t.dropped})
                trials[names] = trial if trial.passed else trial.without_candidate()
                done(1)
            return trials[names]

        to_measure = _measured(units)
        measured = {u.name for u in to_measure}
        scores, reasons, ranked = self._rank(pass_, model, to_measure, done)
        estimates = {u.name: u.sensitivity or 0.0 for u in units}
        for name, mildest in _mildest(units).items():
            if mildest.name in reasons:
                reasons[name] = f"not tried: it goes further than {mildest.name}, which was not kept"
            elif name not in scores and mildest.name in scores:
                scores[name] = scores[mildest.name] * estimates[name] / (mildest.sensitivity or 1.0)
        scores |= {u.name: u.sensitivity for u in units if u.name not in scores and u.sensitivity is not None}
        order = rank_order([u for u in units if u.name not in reasons], scores)
        bases = {u.name: u.extends for u in units if u.extends in order}
        budget = min(self.max_trials, search_trials(len(order)))
        judge = self._selection_tolerance(ranked + budget)
        low, high = 0, len(order)
        while low < high and len(trials) < budget and not self._late():
            middle = (low + high + 1) // 2
            if attempt(frozenset(order[:middle])).passed:
                low = middle
            else:
                high = middle - 1
        chosen = order[:low]
        least = ""  # of the measured units that broke the budget with the kept units, the one least harmful alone
        for name in order[low:]:
            if bases.get(name) in order[low:] and bases[name] not in chosen:
                reasons[name] = f"not tried: it goes further than {bases[name]}, which was not kept"
            elif least and name in measured and scores[name] >= scores[least]:
                reasons[name] = (f"not tried: it harms the outputs at least as much alone as {least}, which broke "
                                 "the budget with fewer units kept")
            elif len(trials) >= budget:
                reasons[name] = f"not tried: the search's {budget} trials were spent"
            elif self._late():
                reasons[name] = "not tried: the time budget was spent"
            elif attempt(frozenset([*chosen, name])).passed:
                chosen.append(name)
            else:
                reasons[name] = f"breaks the budget with the kept units: {attempt(frozenset([*chosen, name])).failure}"
                if name in measured and (not least or scores[name] < scores[least]):
                    least = name
        best = attempt(frozenset(chosen)) if chosen else None
        if best is not None and best.dropped:  # not expected (the kept set is the latest pass): run it again
            del trials[frozenset(chosen)]
            best = attempt(frozenset(chosen))
        keep = best is not None and best.passed and best.changed
        if keep and best is not None and best.outputs is not None and judge != self.tolerance:
            best = replace(best, verifications=(*best.verifications[:-1],
                                                self.verifier.against_original(best.outputs, self.tolerance)))
        outcomes = tuple(
            UnitOutcome(
                u.name,
                keep and u.name in chosen,
                None if math.isinf(scores.get(u.name, math.inf)) else scores.get(u.name),
                u.detail,
                reasons.get(u.name, ""),
            )
            for u in units
        )
        return (best if keep else None), outcomes, len(trials) + len(measured)

    def _rank(self, pass_: PassBase, model: onnx.ModelProto, units: Sequence[Unit],
              done: Callable[[int], None]) -> tuple[dict[str, float], dict[str, str], int]:
        """Each unit's damage applied alone (``graphopt.sensitivity``), why a unit that clearly fails alone is left
        out, and how many candidates the ranking judged on verification samples (the selection confidence covers
        them). Units are ranked on the calibration samples when there are real ones, so that the verification
        samples judge only the search's trials; otherwise on the first verification samples."""
        if not units:
            return {}, {}, 0
        calibration = self.context.calibration
        on_calibration = calibration is not None and not calibration.synthetic and calibration.n_samples > 1
        data = calibration if calibration is not None and on_calibration else self.verifier.data
        data = data.window(0, min(RANK_SAMPLES, data.n_samples))
        screens = measure_alone(pass_, model, [u.name for u in units], self.context, data, self.tolerance,
                                self.verifier.kinds, done)
        scores = {name: math.inf if s.failure else s.badness for name, s in screens.items()}
        reasons = {name: f"fails alone{' on the calibration samples' if on_calibration and s.samples else ''}: "
                         f"{s.failure}" for name, s in screens.items() if s.failure}
        return scores, reasons, 0 if on_calibration else len(units)

    def _selection_tolerance(self, candidates: int) -> Tolerance:
        """The budget at the confidence that covers a choice among ``candidates`` (itself when it judges means, or
        there is no choice)."""
        if self.tolerance.confidence is None or candidates <= 1:
            return self.tolerance
        return self.tolerance.at_confidence(selection_confidence(self.tolerance.confidence, candidates))


def search_trials(units: int) -> int:
    """The end-to-end trials a search among ``units`` ranked units may make: the bisection's steps and twice as
    many retries. Each is judged at the selection confidence of them all, so whatever the search keeps holds at it.
    With as many retries as steps, PP-OCRv4 det kept 7 of 31 clustered layers instead of 9 (retries found six)."""
    return 3 * math.ceil(math.log2(units + 1))


def rank_order(units: Sequence[Unit], scores: Mapping[str, float]) -> list[str]:
    """``units`` in the order a search adds them: by damage (``scores``), per unit of gain when every unit states
    one. A unit that extends another in ``units`` is judged by what it adds to it (its damage and gain beyond that
    unit's) and comes after it."""
    per_gain = all(u.gain is not None and u.gain > 0 for u in units)
    by_name = {u.name: u for u in units}

    def added(unit: Unit) -> float:
        base = by_name.get(unit.extends or "")
        damage = scores[unit.name] - (scores[base.name] if base is not None else 0.0)
        if not per_gain:
            return max(damage, 0.0) if base is not None else damage
        gain = float(unit.gain or 0) - (float(base.gain or 0) if base is not None else 0.0)
        return max(damage, 0.0) / gain if gain > 0 else math.inf

    keys: dict[str, tuple[float, int]] = {}

    def key(unit: Unit) -> tuple[float, int]:  # a unit never ranks before the unit it extends
        if unit.name not in keys:
            base = by_name.get(unit.extends or "")
            keys[unit.name] = (0.0, 0)  # a cycle of extends is cut here
            below = key(base) if base is not None else (-math.inf, -1)
            keys[unit.name] = (max(added(unit), below[0]), below[1] + 1)
        return keys[unit.name]

    return [u.name for u in sorted(units, key=key)]


def _measured(units: Sequence[Unit]) -> list[Unit]:
    """The units a search measures alone: all of them up to ``MEASURED_UNITS`` but the stronger levels whose
    damage is scaled from their layer's mildest level's (``_mildest``), beyond it those without the pass's own
    estimate."""
    scaled = _mildest(units)
    return [u for u in units if u.sensitivity is None or (len(units) <= MEASURED_UNITS and u.name not in scaled)]


def _mildest(units: Sequence[Unit]) -> dict[str, Unit]:
    """For each stronger level of a layer (a unit that ``extends`` another) with the pass's own estimate, the
    layer's mildest level, when that has a positive estimate too: the level's damage is then
    ``damage(mildest) · estimate(level) / estimate(mildest)``. A level's damage relative to its layer's mildest is
    what a pass estimates well; across layers, a measurement on the outputs ranks better. Measuring one level per
    layer instead of three took PP-OCRv4 rec's pruning ranking from 50 candidates to 18, with the same order. A
    scaled damage is an estimate, so a search does not leave a level untried for it (``least``): when it did,
    MiniLM's pruning kept 1 of 18 levels instead of 3."""
    by_name = {u.name: u for u in units}
    found: dict[str, Unit] = {}
    for unit in units:
        mildest, seen = unit, {unit.name}
        while mildest.extends in by_name and mildest.extends not in seen:
            seen.add(mildest.extends)
            mildest = by_name[mildest.extends]
        if mildest is not unit and unit.sensitivity is not None and (mildest.sensitivity or 0) > 0:
            found[unit.name] = mildest
    return found


def _in_openvino(model: onnx.ModelProto, session: Session) -> tuple[Session, str]:
    """``model`` compiled by OpenVINO's CPU plugin at its defaults (what a user gets on this CPU), to be verified
    there, with a note for the report; ``session`` (onnxruntime) and a note saying so where OpenVINO is not
    installed."""
    if openvino.unavailable() is not None:
        return session, ("verified in onnxruntime: OpenVINO is not installed here, so the verdict is onnxruntime's, "
                         "not the target's (pip install openvino)")
    try:
        compiled = openvino.CompiledSession(model)
    except RuntimeError as e:
        raise UnsupportedModelError(f"OpenVINO cannot compile it: {openvino.openvino_reason(e)}") from e
    return compiled, (f"verified in OpenVINO {openvino.version()}'s CPU plugin, the target's runtime (its defaults "
                      f"here: {compiled.precision} for float layers)")


def _nothing_to_change(result: PassResult | None) -> str:
    """"nothing to change", with the pass's most frequent reason for what it left alone."""
    reasons = Counter(s.reason.split(":")[0] for s in (result.skipped if result else ()))
    if not reasons:
        return "nothing to change"
    (reason, count), total = reasons.most_common(1)[0], sum(reasons.values())
    return f"nothing to change ({count} of {total} skipped: {reason})"
