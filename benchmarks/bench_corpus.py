"""The robustness corpus, full run: every onnx backend node test (and its weights variant) and light CNN through
normalisation and every registered pass with verification, under the default and the stress profile; counts of
applied, unchanged, refused (by reason), skipped and rolled back (by pass and reason), timeouts, and errors, which
must be 0.

Usage:
    python benchmarks/bench_corpus.py                          # everything: 3,256 models × 2 profiles
    python benchmarks/bench_corpus.py --limit 200 --filter conv --profiles stress --timeout 120 --jobs 2

Writes ``benchmarks/results/corpus-<YYYY-MM-DD>.md`` and ``.json`` (``--out``, ``--name``) and prints the tables.
Cases, data, profiles and the classification are described in ``benchmarks/corpus.py``. Cases run in worker
processes (``--jobs`` at a time, each capped at ``--memory`` GB); one still running after ``--timeout`` seconds is
ended and listed as a ``timeout``, one that dies without a result (a crash) is an error. ``--limit N`` takes N
cases evenly spread over the filtered list. Exit status 1 when there are errors. Not part of CI:
``tests/test_corpus.py`` runs a fixed sample.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs
from corpus import KINDS, OUTCOMES, PROFILES, STRESS, Case, CaseResult, Tally, iter_cases, run_case
from harness import write
from workloads import ROOT, machine

import graphopt

log = logging.getLogger("bench_corpus")

ROWS = ("cases: [outcome, seconds, reason] of every case refused, in error, timed out or taking 1 s or more; the "
        "applied ones with their passes are in tallies.applied, the other unchanged ones only in the counts")


def spread(cases: list[Case], limit: int | None) -> list[Case]:
    """``limit`` cases evenly spaced over ``cases`` (all of them without a limit)."""
    if limit is None or limit >= len(cases):
        return cases
    step = len(cases) / limit
    return [cases[int(i * step)] for i in range(limit)]


def _limit_memory(gigabytes: float) -> None:
    """Cap this process's data segment (heap and private mappings) so that one huge case cannot exhaust the
    machine: an allocation beyond it fails in that case instead."""
    if gigabytes > 0:
        limit = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _child(conn: Connection, case: Case, profile: str, memory: float) -> None:
    _limit_memory(memory)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings go to stdout, once per process
    conn.send(run_case(case, profile))
    conn.close()


def run_all(cases: Sequence[Case], profile: str, jobs: int, timeout: float, memory: float = 0.0
            ) -> Iterator[CaseResult]:
    """Each case in its own forked process, ``jobs`` at a time, results as they finish. A process still running
    after ``timeout`` seconds is ended (it is one this function started) and its case is a ``timeout``; a process
    that dies without a result (a crash: segfault, abort, out of memory) makes its case an error."""
    context = multiprocessing.get_context("fork")
    pending = list(cases)
    running: dict[Connection, tuple[Case, Any, float]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(send, case, profile, memory), daemon=True)
            process.start()
            send.close()
            running[receive] = (case, process, time.monotonic())
        for conn in wait(list(running), timeout=1.0):
            assert isinstance(conn, Connection)
            case, process, started = running.pop(conn)
            try:
                result: CaseResult = conn.recv()
            except EOFError:
                process.join()
                code = process.exitcode
                why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                result = CaseResult(case.name, case.kind, "error", f"the worker died without a result ({why})",
                                    time.monotonic() - started, errors=[f"worker died: {why}"])
            conn.close()
            process.join()
            yield result
        now = time.monotonic()
        for conn, (case, process, started) in list(running.items()):
            if now - started > timeout:
                process.terminate()
                process.join()
                conn.close()
                del running[conn]
                yield CaseResult(case.name, case.kind, "timeout", f"still running after {timeout:.0f} s", timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default=None, help="regular expression on case names (e.g. '^test_conv|light')")
    parser.add_argument("--limit", type=int, default=None, help="at most this many cases, evenly spread")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--profiles", default=",".join(PROFILES), help=f"comma-separated, of {', '.join(PROFILES)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case before it is stopped and listed")
    parser.add_argument("--slow", type=float, default=20.0, help="cases slower than this are listed as slow")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--memory", type=float, default=8.0, help="GB of data memory per worker (0: no limit)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="corpus", help="results file stem (<name>-<date>.md/.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    cases = spread(list(iter_cases(args.filter, args.kinds.split(","))), args.limit)
    profiles = args.profiles.split(",")
    passes = list(graphopt.list_passes())
    kinds = Counter(c.kind for c in cases)
    print(f"{len(cases)} cases ({_counts(kinds)}), profiles {', '.join(profiles)}, passes: {', '.join(passes)}",
          flush=True)
    tallies: dict[str, Tally] = {}
    rows: dict[str, dict[str, list[object]]] = {}  # profile → case → [outcome, seconds(, reason)]: see ROWS
    started = time.perf_counter()
    for profile in profiles:
        tally = tallies[profile] = Tally(slow_seconds=args.slow)
        for result in run_all(cases, profile, args.jobs, args.timeout, args.memory):
            tally.add(result)
            if result.outcome not in ("applied", "unchanged") or result.seconds >= 1.0:
                row: list[object] = [result.outcome, round(result.seconds, 2)]
                rows.setdefault(profile, {})[result.name] = row + ([result.reason] if result.reason else [])
            if result.outcome in ("error", "timeout") or result.seconds > args.slow:
                print(f"{result.outcome.upper()} [{profile}] {result.name} {result.seconds:.0f} s: {result.reason}",
                      flush=True)
            if tally.models % 250 == 0:
                print(f"  [{profile}] {tally.summary()}", flush=True)
    wall = time.perf_counter() - started

    stress = ", ".join(f"{k}={v}" for k, v in STRESS.items())
    lines = [
        (f"# Robustness corpus: {len(cases)} models ({_counts(kinds)}), onnx {machine()['onnx']}, "
        f"onnxruntime {machine()['onnxruntime']}"),
        "",
        (f"`python benchmarks/bench_corpus.py{_flags(argv)}`. Each model: normalise, then every registered pass "
        f"({', '.join(passes)}) with verification in one pipeline, then save and re-check the written file; data "
        "are two identical samples of the node test's inputs (generated for the light CNNs). Profiles: `default` "
        f"(the passes' default options) and `stress` ({stress}, for every pass with such an option). Cases, data "
        "and the classification: `benchmarks/corpus.py`."),
        "",
        (f"Wall time {wall:.0f} s, {args.jobs} worker{'s' if args.jobs > 1 else ''} of at most {args.memory:g} GB "
        f"each, timeout {args.timeout:.0f} s per case."),
        "",
        "| profile | models | " + " | ".join(OUTCOMES) + " | seconds |",
        "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|",
    ]
    lines += [f"| {p} | {t.models} | " + " | ".join(str(t.outcomes[o]) for o in OUTCOMES) + f" | {t.seconds:.0f} |"
              for p, t in tallies.items()]
    for profile, tally in tallies.items():
        lines += ["", f"## Profile `{profile}`", "", tally.markdown()]
    text = "\n".join(lines)
    print(text)
    payload = {"machine": machine(), "cases_listed": ROWS, "argv": list(argv if argv is not None else sys.argv[1:]), "passes": passes,
               "stress": STRESS, "wall_seconds": round(wall, 1),
               "tallies": {p: t.to_dict() for p, t in tallies.items()},
               "cases": {p: dict(sorted(r.items())) for p, r in rows.items()}}
    write(Path(args.out), args.name, text, payload)
    return 1 if any(t.errors for t in tallies.values()) else 0


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counter.items())


def _flags(argv: Sequence[str] | None) -> str:
    args = list(argv if argv is not None else sys.argv[1:])
    return (" " + " ".join(args)) if args else ""


if __name__ == "__main__":
    sys.exit(main())
