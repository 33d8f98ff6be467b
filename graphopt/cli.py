"""The ``graphopt`` command: a thin layer that parses flags, calls the API and renders the result.

Exit codes: 0 success; 1 internal error (a bug: traceback shown); 2 usage or pipeline error, or a tolerance that is
not a number in its range; 3 unreadable or unsupported model; 4 output path refused (it would overwrite an input or
another output); 5 data does not fit the model; 7 ``validate`` found the optimised model not shippable; 8 ``fleet``
finished, but some of its models failed (each row says why); 130 interrupted (SIGINT); 143 terminated (SIGTERM).
Every user mistake prints one line on stderr and writes nothing; an interrupted run removes what it was staging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import shutil
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import graphopt
from graphopt import api, progress
from graphopt.errors import GraphoptError, OutputKindError, UsageError
from graphopt.pipeline import option_choices, option_fields, option_text, option_type
from graphopt.report.render import (
    DEFAULT_WIDTH,
    bench_json,
    format_bytes,
    render_bench_table,
    render_fleet_table,
    render_table,
    render_validation_table,
    to_json,
    validation_json,
    wrap,
)
from graphopt.runtime import GRAPH_OPTIMIZATION_LEVELS, RuntimeConfig
from graphopt.verify.output_kinds import OutputKind, parse_output_kind
from graphopt.verify.tolerance import DEFAULT_CONFIDENCE, Tolerance

__all__ = ["INTERRUPTED", "TERMINATED", "main"]

INTERRUPTED = 130
TERMINATED = 143


class _HelpFormatter(argparse.HelpFormatter):
    """Help that ends each flag's line with its default, where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default in (None, False, [], "", argparse.SUPPRESS)
        if quiet or not action.option_strings or "%(default)" in text or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"graphopt: error: {message} (see --help)\n")


class _Version(argparse.Action):
    """``--version``: graphopt's version and the versions a bug report needs beside it, looked up only when
    asked."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        def of(package: str) -> str:
            try:
                return metadata.version(package)
            except metadata.PackageNotFoundError:
                return "not installed"

        sys.stdout.write(f"graphopt {graphopt.__version__} (onnxruntime {of('onnxruntime')}, onnx {of('onnx')}, "
                         f"numpy {of('numpy')}, Python {platform.python_version()})\n")
        parser.exit()


class TerminalProgress:
    """Progress bars (rich) on a terminal: each open task shows k of n, the time spent and the time left; a task
    is removed when it ends, so the screen shows the work in hand. Silent when the stream is not a terminal."""

    def __init__(self, stream: TextIO = sys.stderr, *, force_terminal: bool | None = None) -> None:
        console = Console(file=stream, force_terminal=force_terminal)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("left"), TimeRemainingColumn(), console=console, transient=True,
                             disable=not console.is_terminal)
        self._open = 0

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self._open:  # nested tasks (a trial's verification inside a search) share one live display
            self.bars.start()
        self._open += 1
        task = self.bars.add_task(label, total=total)
        try:
            yield lambda n: self.bars.advance(task, n)
        finally:
            self.bars.remove_task(task)
            self._open -= 1
            if not self._open:
                self.bars.stop()


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphopt", description="Compress ONNX models with verified passes.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the versions of graphopt and what it runs "
                        "on, and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    parser.add_argument("--log-file", default=None, metavar="PATH", help="optimize and validate: write the log "
                        "there instead of stderr (what -v shows, at least info; -vv: debug); an output like the "
                        "others, never an input's path")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no table: errors only (--json "
                        "still prints the report; the files are written as always)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("optimize", help="run a pipeline of passes, verifying each one")
    run.add_argument("model", help="input ONNX model (never modified)")
    run.add_argument("-o", "--output", required=True, help="where to write the optimised model")
    run.add_argument("--data", default="random", help=".npz file or folder of samples, or 'random' (lossless only)")
    run.add_argument("--passes", default=None, help="pipeline, e.g. 'zero-weight-elimination,qdq-int8', or a file of one "
                     "(TOML, or an earlier run's JSON report) (default: "
                     f"{','.join(api.DEFAULT_PIPELINE)}, lossless)")
    run.add_argument("--goal", default=None, help="instead of --passes: latency, size or latency,size (their "
                     "product); graphopt tries a plan per pass setting that serves it, verifies each and keeps the "
                     "best (or the original)")
    run.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="with --goal: seconds of search (default 240); then the running plan keeps what it "
                     "verified so far and no further plan starts")
    run.add_argument("--report", default=None, help="JSON report path (default: <output stem>.report.json)")
    budget = Tolerance.budget()
    lossless = Tolerance.lossless()
    run.add_argument("--cosine", type=float, default=budget.cosine, help="minimum mean cosine vs the original")
    run.add_argument("--top1", type=float, default=budget.top1, help="minimum top-1 agreement of class scores")
    run.add_argument("--iou", type=float, default=budget.iou, help="minimum mask IoU of probability maps")
    run.add_argument("--snr-db", type=float, default=None, help="minimum SNR in dB vs the original")
    run.add_argument("--atol", type=float, default=None, help="absolute tolerance vs the original (with --rtol)")
    run.add_argument("--rtol", type=float, default=0.0, help="relative tolerance used with --atol")
    run.add_argument("--lossless-atol", type=float, default=lossless.atol, help="lossless passes: atol")
    run.add_argument("--lossless-rtol", type=float, default=lossless.rtol, help="lossless passes: rtol")
    _add_confidence_flag(run)
    _add_output_kind_flag(run)
    run.add_argument("--calibration-fraction", type=float, default=0.5, help="share of samples for fitting")
    run.add_argument("--no-normalize", action="store_true", help="skip the normalisation pass")
    _add_runtime_flags(run)
    run.add_argument("--labels", default=None, help="label array in the data file, or an .npy file (for --metric)")
    run.add_argument("--metric", default=None, help="task metric every pass is also held to (graphopt.metrics entry "
                     "points: accuracy, ctc-greedy, or your own)")
    run.add_argument("--max-drop", type=float, default=0.01, help="largest drop of --metric that passes")
    run.add_argument("--html", default=None, help="also write the run as a self-contained HTML page")
    run.add_argument("--json", action="store_true", help="print the JSON report instead of the table")

    check = commands.add_parser("validate", help="can the optimised model ship? held-out, k-fold, shifted inputs, "
                                "threads and providers, performance")
    check.add_argument("original", help="the original ONNX model")
    check.add_argument("optimized", help="the optimised ONNX model")
    check.add_argument("--data", required=True, help=".npz file or folder of real samples")
    check.add_argument("--labels", default=None, help="label array in the data file, or an .npy file: adds accuracy")
    check.add_argument("--metric", default=None, help="task metric registered in the graphopt.metrics entry points")
    check.add_argument("--max-accuracy-drop", type=float, default=0.01, help="largest accuracy loss that passes")
    check.add_argument("--passes", default=None, help="pipeline that made the model (default: the one it records)")
    check.add_argument("--folds", type=int, default=5, help="k of the k-fold section (held-out samples: leave-one-out)")
    check.add_argument("--skip", default="", help=f"sections to skip, comma-separated ({', '.join(api.SECTIONS)})")
    check.add_argument("--cosine", type=float, default=budget.cosine, help="minimum mean cosine vs the original")
    check.add_argument("--top1", type=float, default=budget.top1, help="minimum top-1 agreement of class scores")
    check.add_argument("--iou", type=float, default=budget.iou, help="minimum mask IoU of probability maps")
    check.add_argument("--snr-db", type=float, default=None, help="minimum SNR in dB vs the original")
    _add_confidence_flag(check)
    _add_output_kind_flag(check)
    check.add_argument("--seed", type=int, default=0, help="seed of folds, shifts and bootstrap resampling")
    check.add_argument("--report", default=None, help="write the JSON report here")
    check.add_argument("--html", default=None, help="write a self-contained HTML page here")
    _add_runtime_flags(check)
    check.add_argument("--json", action="store_true", help="print the JSON report instead of the table")

    timing = commands.add_parser("bench", help="latency, throughput, load time and memory of models, and of what "
                                 "pipelines make of them, on this CPU, side by side")
    timing.add_argument("models", nargs="+", metavar="MODEL", help="ONNX models (never modified) taking the same inputs")
    timing.add_argument("--data", default="random", help=".npz file or folder of samples, or 'random' (no lossy "
                        "pipeline): sample 1 is the batch-1 feed")
    timing.add_argument("--passes", default=None, help="pipelines separated by ';', e.g. 'qdq-int8;low-rank': each "
                        "model is optimised (and verified) with each, and the results benchmarked beside it")
    timing.add_argument("--threads", default=None, help="intra-op threads for batch-1 latency, comma-separated "
                        "(default: 1 and all cores)")
    timing.add_argument("--batch-sizes", default="1,8", help="batches for throughput (with the most threads)")
    timing.add_argument("--runtime", default=None, help="runtimes, comma-separated (default: every one here: "
                        "onnxruntime, onnxruntime:<provider> for other CPU providers, openvino when installed)")
    timing.add_argument("--runs", type=int, default=300, help="timed runs per call (after warm-up)")
    timing.add_argument("--budget", type=float, default=10.0, metavar="SECONDS",
                        help="about how long one timing call may take (at least 20 runs)")
    timing.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a fresh "
                        "process per model)")
    timing.add_argument("--labels", default=None, help="label array in the data file, or an .npy file")
    _add_output_kind_flag(timing)
    timing.add_argument("--report", default=None, help="write the JSON report (graphopt.bench/1) here")
    timing.add_argument("--html", default=None, help="write a self-contained HTML page with bar plots here")
    timing.add_argument("--json", action="store_true", help="print the JSON report instead of the table")

    many = commands.add_parser("fleet", help="optimise every model of a manifest, each verified, on a process "
                               "pool; a re-run skips the models whose outputs are up to date")
    many.add_argument("manifest", help="TOML file of [[model]] tables: model, data, and passes or goal (paths "
                      "relative to it; see the README)")
    many.add_argument("-o", "--output-dir", required=True, help="where each model's output and report go "
                      "(<name>.onnx, <name>.report.json)")
    many.add_argument("--workers", type=int, default=None, help="models optimised at once, each in its own process "
                      "with the cores shared out as onnxruntime threads (default: the cores)")
    many.add_argument("--ray", default=None, metavar="local|ADDRESS", help="run each model as a Ray task instead: "
                      "'local' starts Ray in this process, an address (ray://host:10001, or auto) joins that cluster, "
                      "whose workers must see the models and data at the same paths (pip install 'graphopt[ray]')")
    many.add_argument("--report", default=None, help="write the fleet's JSON report (graphopt.fleet/1) here")
    many.add_argument("--html", default=None, help="write a self-contained HTML page with a row and bars per model "
                      "here")
    many.add_argument("--json", action="store_true", help="print the JSON report instead of the table")

    listing = commands.add_parser("passes", help="list registered passes")
    listing.add_argument("--json", action="store_true", help="machine-readable list")

    look = commands.add_parser("inspect", help="opset, inputs/outputs, operators, params and size of a model")
    look.add_argument("model")
    look.add_argument("--json", action="store_true", help="machine-readable summary")
    return parser


def _add_confidence_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="judge cosine and top-1 by their one-sided lower confidence bound at this level "
                             "(0: by their means on the verification samples)")


def _add_output_kind_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-kind", action="append", default=[], metavar="OUTPUT=KIND",
                        help="how to judge an output the graph does not describe (repeatable): classes[:AXIS] "
                             "(top-1 per position), mask[:THRESHOLD] (IoU), or values")


def _output_kinds(args: argparse.Namespace) -> dict[str, OutputKind]:
    kinds = {}
    for item in args.output_kind:
        name, sep, kind = item.rpartition("=")
        if not sep or not name:
            raise OutputKindError(f"--output-kind takes OUTPUT=KIND, got {item!r}")
        kinds[name] = parse_output_kind(kind)
    return kinds


def _confidence(args: argparse.Namespace) -> float | None:
    return None if args.confidence == 0 else args.confidence


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RuntimeConfig()
    parser.add_argument("--provider", action="append", default=None, help="execution provider (repeatable)")
    parser.add_argument("--threads", type=int, default=defaults.intra_op_threads, help="intra-op threads (0: auto)")
    parser.add_argument(
        "--graph-optimization", choices=sorted(GRAPH_OPTIMIZATION_LEVELS), default=defaults.graph_optimization
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples per run")


def _runtime(args: argparse.Namespace) -> RuntimeConfig:
    try:
        return RuntimeConfig(
            providers=tuple(args.provider) if args.provider else RuntimeConfig().providers,
            intra_op_threads=args.threads,
            graph_optimization=args.graph_optimization,
            batch_size=args.batch_size,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e


def _optimize(args: argparse.Namespace, out: TextIO) -> int:
    tolerance = Tolerance(atol=args.atol, rtol=args.rtol, cosine=args.cosine, snr_db=args.snr_db, top1=args.top1,
                          iou=args.iou, confidence=_confidence(args))
    result = api.optimize(
        args.model,
        args.data,
        passes=args.passes,
        output=args.output,
        report=args.report,
        tolerance=tolerance,
        lossless_tolerance=Tolerance(atol=args.lossless_atol, rtol=args.lossless_rtol),
        runtime=_runtime(args),
        calibration_fraction=args.calibration_fraction,
        normalize=not args.no_normalize,
        progress=_progress(args),
        html=args.html,
        labels=args.labels,
        metric=args.metric,
        max_drop=args.max_drop,
        output_kinds=_output_kinds(args),
        goal=args.goal,
        time_budget=args.time_budget,
        **_log_file(args),
    )
    _show(args, out, lambda: to_json(result.report), lambda width: render_table(result.report, width),
          result.output_path, result.report_path, result.html_path)
    return 0


def _show(args: argparse.Namespace, out: TextIO, as_json: Callable[[], str], table: Callable[[int], str],
          *written: Path | None) -> None:
    """A command's result: its JSON with ``--json``; else, unless ``--quiet``, its table at the terminal's width
    and the files it wrote."""
    if args.json:
        out.write(as_json())
    elif not args.quiet:
        width = _width()
        out.write(table(width) + "\n")
        paths = [str(p) for p in written if p]
        if paths:
            out.writelines(f"{line}\n" for line in wrap(f"wrote {', '.join(paths)}", width, "  "))


def _log_file(args: argparse.Namespace) -> dict[str, Any]:
    """``--log-file`` as the API takes it: the path, and info (debug with -vv) as its level."""
    return {"log_file": args.log_file, "log_level": logging.DEBUG if args.verbose >= 2 else logging.INFO}


def _progress(args: argparse.Namespace) -> progress.Progress:
    """Progress bars on a terminal, none with ``--quiet``."""
    return progress.NULL_PROGRESS if args.quiet else TerminalProgress()


def _width() -> int:
    """The terminal's columns (``COLUMNS`` when set), or ``DEFAULT_WIDTH`` when the output is not a terminal."""
    return max(shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns, 40)


class _NotShippable(GraphoptError):
    exit_code = 7


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(skip - set(api.SECTIONS))
    if unknown:
        raise UsageError(f"--skip: unknown section(s) {', '.join(unknown)} (known: {', '.join(api.SECTIONS)})")
    result = api.validate(
        args.original,
        args.optimized,
        args.data,
        labels=args.labels,
        passes=args.passes,
        sections=[s for s in api.SECTIONS if s not in skip],
        folds=args.folds,
        metric=args.metric,
        max_accuracy_drop=args.max_accuracy_drop,
        tolerance=Tolerance(cosine=args.cosine, snr_db=args.snr_db, top1=args.top1, iou=args.iou,
                            confidence=_confidence(args)),
        output_kinds=_output_kinds(args),
        runtime=_runtime(args),
        seed=args.seed,
        report=args.report,
        html=args.html,
        progress=_progress(args),
        **_log_file(args),
    )
    _show(args, out, lambda: validation_json(result.report),
          lambda width: render_validation_table(result.report, width), result.report_path, result.html_path)
    if not result.report.passed:
        failed = ", ".join(s.title for s in result.report.sections if s.passed is False)
        raise _NotShippable(f"validation failed: {failed}")
    return 0


def _counts(text: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of whole numbers (``--threads 1,2``), or a usage error naming the flag."""
    if text is None:
        return None
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None


def _bench(args: argparse.Namespace, out: TextIO) -> int:
    from graphopt.benchmark import bench

    result = bench(args.models, args.data, passes=args.passes, threads=_counts(args.threads, "--threads"),
                   batch_sizes=_counts(args.batch_sizes, "--batch-sizes") or [1],
                   runtimes=args.runtime.split(",") if args.runtime else None, runs=args.runs,
                   budget_s=args.budget, memory=not args.no_memory, labels=args.labels,
                   output_kinds=_output_kinds(args), report=args.report, html=args.html, progress=_progress(args))
    _show(args, out, lambda: bench_json(result.report), lambda width: render_bench_table(result.report, width),
          result.report_path, result.html_path)
    return 0


class _FleetFailed(GraphoptError):
    exit_code = 8


def _fleet(args: argparse.Namespace, out: TextIO) -> int:
    from graphopt.fleet import run_fleet

    result = run_fleet(args.manifest, args.output_dir, workers=args.workers, ray=args.ray, report=args.report,
                       html=args.html, progress=_progress(args))
    report = result.report
    _show(args, out, lambda: json.dumps(report.to_dict(), indent=2) + "\n",
          lambda width: render_fleet_table(report, width), result.report_path, result.html_path)
    if report.failed:
        raise _FleetFailed(f"{len(report.failed)} of {len(report.rows)} models failed: "
                           + ", ".join(row.name for row in report.failed))
    return 0


def _passes(args: argparse.Namespace, out: TextIO) -> int:
    passes = api.list_passes()
    if args.json:
        listing = {
            name: {
                "summary": cls.summary(),
                "lossless": cls.lossless,
                "options": {f.name: {"type": option_type(t), "default": f.default, "help": f.metadata.get("help", ""),
                                     **({"choices": list(option_choices(t))} if option_choices(t) else {})}
                            for f, t in option_fields(cls)},
            }
            for name, cls in passes.items()
        }
        out.write(json.dumps(listing, indent=2, default=str) + "\n")
        return 0
    width = _width()
    for name, cls in passes.items():
        out.writelines(f"{line}\n" for line in wrap(f"{name} ({'lossless' if cls.lossless else 'lossy'}): "
                                                    f"{cls.summary()}", width, "    "))
        for f, t in option_fields(cls):
            choices = option_choices(t)
            kind = f"one of {', '.join(choices)}" if choices else option_type(t)
            text = f"{f.name}={option_text(f.default)} ({kind}): {f.metadata.get('help', '')}".rstrip(": ")
            out.writelines(f"{line}\n" for line in wrap(text, width, "      ", first="    "))
    return 0


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    summary = api.inspect(args.model)
    if args.json:
        out.write(json.dumps(summary.to_dict(), indent=2) + "\n")
        return 0
    opsets = ", ".join(f"{domain or 'ai.onnx'} {v}" for domain, v in summary.opsets.items())
    out.write(f"IR {summary.ir_version}, opsets {opsets}\n")
    for kind, values in (("input", summary.inputs), ("output", summary.outputs)):
        out.writelines(f"{kind:<7} {v['name']}: {v.get('type')} {v.get('shape', '')}\n" for v in values)
    out.write(f"nodes {summary.nodes}, params {summary.params}, size {format_bytes(summary.size_bytes)}\n")
    out.write("ops    " + ", ".join(f"{op} {n}" for op, n in summary.ops.items()) + "\n")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (staging folders) runs before the exit."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM unwinds as SIGINT does while the command runs (main thread only; restored afterwards)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals to the host program
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    out = out or sys.stdout
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # a non-UTF-8 terminal shows '?' instead of failing on '→'
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors; main returns codes instead
        return int(e.code or 0)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    commands = {"optimize": _optimize, "validate": _validate, "bench": _bench, "fleet": _fleet, "passes": _passes,
                "inspect": _inspect}
    if args.log_file is not None and args.command not in ("optimize", "validate"):
        sys.stderr.write(f"graphopt: error: --log-file applies to optimize and validate, not {args.command}\n")
        return UsageError.exit_code
    with _terminate_like_interrupt(), warnings.catch_warnings():
        if not args.verbose:  # numpy's overflow/divide warnings on odd data: the NaN rule judges their results
            warnings.simplefilter("ignore", RuntimeWarning)
        else:
            logging.captureWarnings(True)
        try:
            return commands[args.command](args, out)
        except GraphoptError as e:  # one line, whatever the message quotes (a file name may hold a newline)
            sys.stderr.write(f"graphopt: error: {' '.join(str(e).splitlines())}\n")
            return e.exit_code
        except _Terminated:
            sys.stderr.write("graphopt: terminated\n")
            return TERMINATED
        except KeyboardInterrupt:
            sys.stderr.write("graphopt: interrupted\n")
            return INTERRUPTED
