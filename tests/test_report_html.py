"""The HTML pages of ``optimize`` and ``validate``: structure and escaping with ``html.parser``, then a real render
in headless Chromium (skipped when it is not installed) proving the page's script ran and nothing raised."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import replace
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphopt.report.html import optimize_page, validation_page
from graphopt.report.model import PassRecord, Report
from graphopt.validation.model import Check, Section, ValidationReport

EVIL = "<blink>&amp;"
TOLERANCE = {"atol": None, "rtol": None, "cosine": 0.999, "snr_db": None, "top1": 0.99}
CHROMIUM_TIMEOUT_S = 30


BASE = PassRecord(name="", status="", reason="", lossless=False, options={}, stats={}, skipped=[], notes=[],
                  params_before=1_200_000, params_after=1_200_000, size_before=4_800_000, size_after=4_800_000,
                  worst=None, verifications=[], units=[], trials=0, seconds=0.5)


def _record(name: str, status: str, reason: str = "", **changes: Any) -> PassRecord:
    return replace(BASE, name=name, status=status, reason=reason, **changes)


def _units(n: int, kept: int, seed: int) -> list[dict[str, object]]:
    """Sensitivities over six decades, one unmeasured and one exactly zero, as a narrowed pass records them."""
    rng = np.random.default_rng(seed)
    values: list[float | None] = [float(v) for v in 10.0 ** rng.uniform(-7, -1, n)]
    values[3], values[5] = None, 0.0
    return [{"name": f"/encoder/layer.{i}/MatMul<{i}>&W" + ("_with_a_very_long_tensor_name" if i % 7 == 0 else ""),
             "applied": i < kept, "sensitivity": values[i], "detail": f"{64 * (i + 1)} values",
             "reason": "" if i < kept else "breaks the budget with the kept units: cosine 0.9981 < 0.999"}
            for i in range(n)]


def optimize_report() -> Report:
    return Report(
        graphopt_version="0.1.0",
        input_path="models/<tiny>&net.onnx",
        output_path="out/tiny.opt.onnx",
        input_summary={"params": 1_200_000, "size_bytes": 4_800_000, "nodes": 120},
        output_summary={"params": 900_000, "size_bytes": 1_900_000, "nodes": 118},
        data={"source": "digits.npz", "synthetic": False, "samples": 256, "calibration_samples": 128,
              "verification_samples": 128},
        runtime={"providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "graph_optimization": "all"},
        tolerance=TOLERANCE,
        passes=[
            _record("float16", "applied", stats={"initializers_converted": 40}, size_after=2_400_000, seconds=1.25,
                    worst={"output": "logits<&>", "cosine": 0.99999, "top1": 1.0, "max_abs": 2e-3, "snr_db": 61.0}),
            _record("low-rank", "narrowed", "10 of 40 units left out: cosine 0.9982 < 0.999", units=_units(40, 30, 1),
                    stats={"layers_factorized": 30, "params_removed": 300_000}, params_after=900_000,
                    size_before=2_400_000, size_after=1_900_000, trials=14, seconds=12.3,
                    worst={"output": "logits<&>", "cosine": 0.9991, "top1": None, "max_abs": float("nan")},
                    notes=[f"note with {EVIL} in it"]),
            _record("int4-weights", "rolled back", "cosine 0.91 < 0.999 with any unit", units=_units(95, 0, 2),
                    size_before=1_900_000, size_after=1_900_000, trials=9, seconds=30.0,
                    skipped=[{"target": "Gather<&>embedding", "reason": "not a MatMul weight"}]),
            _record("zero-weight-elimination", "skipped", "nothing to change (12 of 12 skipped: no zeros)",
                    size_before=1_900_000, size_after=1_900_000, seconds=0.0,
                    skipped=[{"target": f"{EVIL}W{i}", "reason": "no zeros"} for i in range(12)]),
        ],
        goal={"goal": "latency", "winner": "lossless,low-rank", "why": "lossless,low-rank: 0.500× the original's",
              "candidates": [_plan("lossless", 0.98, 0.9, False), _plan("lossless,low-rank", 0.5, 0.4, True),
                             _plan(f"lossless,{EVIL}", 0.7, 0.2, True), _plan("lossless,int4", None, None, False)]},
    )


def _plan(plan: str, latency: float | None, size: float | None, edge: bool) -> dict[str, object]:
    return {"plan": plan, "status": "verified" if latency else "unchanged", "reason": "", "latency_ratio": latency,
            "size_ratio": size, "cosine": 0.999 if latency else None, "seconds": 1.0, "frontier": edge}


def _held_out() -> Section:
    section = Section("held_out", "Held-out samples")
    section.checks += [
        Check("logits<&>", True, {"cosine": 0.99962, "cosine_min": 0.998, "cosine_low": 0.99950,
                                  "cosine_high": 0.99971, "top1": 0.995, "top1_low": 0.985, "top1_high": 1.0,
                                  "max_abs": 0.031, "snr_db": 42.5}),
        Check("embedding", True, {"cosine": 1.0, "cosine_min": 1.0, "top1": None, "max_abs": 0.0, "snr_db": None}),
        Check("accuracy", True, {"accuracy_original": 0.91, "accuracy_optimized": 0.905, "accuracy_low": 0.88,
                                 "accuracy_high": 0.93, "accuracy_drop": 0.005}, "logits<&>: drop +0.0050"),
    ]
    section.notes.append("200 held-out samples; intervals: 95% bootstrap of the mean, 2000 resamples")
    return section


def _folds() -> Section:
    section = Section("folds", "5-fold validation")
    for k in range(1, 6):
        section.checks.append(Check(f"optimised model, fold {k}", True, {"cosine": 0.9995 + k * 1e-5, "top1": 1.0},
                                    group="optimised model", level=k))
        cosine = 0.9985 if k == 4 else 0.9993
        section.checks.append(Check(f"low-rank<&>, refit on fold {k}", None, {"cosine": cosine, "top1": None,
                                    "units_kept": 30.0 - k}, "narrowed", group="low-rank<&>", level=k))
    section.checks.append(Check("low-rank<&>: verdict across folds", True, {"folds_agreeing": 5.0},
                                "narrowed in 5/5", group="low-rank<&>"))
    return section


def _shifts() -> Section:
    section = Section("shifts", "Shifted inputs")
    for snr in (40.0, 30.0, 20.0, 10.0):
        fidelity = 0.99995 - (40 - snr) * 5e-5
        section.checks.append(Check(f"noise {snr:g} dB", fidelity >= 0.999, {
            "fidelity_cosine": fidelity, "fidelity_top1": 1.0, "original_stability_cosine": 0.9 + snr / 500,
            "original_stability_top1": None, "optimized_stability_cosine": 0.9 + snr / 510,
            "optimized_stability_top1": None}, "" if fidelity >= 0.999 else f"logits<&>: cosine {fidelity:.5f}",
            "noise", snr))
    for level in (-0.5, 0.5):
        section.checks.append(Check(f"brightness {level:+g}σ", True, {"fidelity_cosine": 0.9998,
                                    "original_stability_cosine": None, "optimized_stability_cosine": float("nan")},
                                    group="brightness", level=level))
    for group in ("contrast", "scale"):
        section.checks += [Check(f"{group} ×{level:g}", True, {"fidelity_cosine": 0.9997}, group=group, level=level)
                           for level in (0.8, 1.25)]
    section.notes.append("fidelity: optimised vs original on the shifted samples")
    return section


def _environments() -> Section:
    section = Section("environments", "Stability across environments")
    section.checks += [
        Check("threads=1", True, {"cosine": 0.9996, "top1": 1.0, "drift_max_abs": 0.0, "drift_cosine": 1.0},
              group="threads", level=1.0),
        Check("threads=2", True, {"cosine": 0.9996, "top1": 1.0, "drift_max_abs": 2.4e-7, "drift_cosine": 1.0},
              group="threads", level=2.0),
        Check("optimization=basic", True, {"cosine": 0.9996, "top1": 1.0, "drift_max_abs": 3.1e-5,
                                           "drift_cosine": 1.0}, group="optimization"),
        Check("provider=Fake<&>EP", False, {}, "cannot create a session: <no such provider>", "provider"),
        Check("repeat", True, {"cosine": 0.9996, "top1": 1.0, "drift_max_abs": 0.0, "drift_cosine": 1.0},
              group="repeat"),
    ]
    return section


def _performance() -> Section:
    section = Section("performance", "Performance")
    figures = {"size_bytes": (4.8e6, 1.9e6), "load_ms": (31.0, 22.0), "latency_median_ms": (1.8, 1.1),
               "latency_p90_ms": (2.3, 1.4), "peak_memory_bytes": (None, None)}
    for name, (before, after) in figures.items():
        ratio = after / before if before and after else None
        section.checks.append(Check(name, None, {"original": before, "optimized": after, "ratio": ratio},
                                    "" if before else "original: peak memory failed: <timeout>"))
    section.notes.append("CPU: Test CPU <&> 2 cores")
    return section


def validation_report() -> ValidationReport:
    custom = Section("custom<&>", "A custom <section> & friends", [Check("only", True, {"score": 1.0})])
    return ValidationReport("0.1.0", "models/<tiny>&net.onnx", "out/tiny.opt.onnx",
                            data={"source": "digits.npz", "samples": 256, "held_out_samples": 200, "labels": True,
                                  "pipeline": "float16,low-rank"},
                            tolerance=TOLERANCE,
                            sections=[_held_out(), _folds(), _shifts(), _environments(), _performance(), custom])


def skipped_report() -> ValidationReport:
    """Sections with no checks: one skipped, one empty; nothing failed, so the model can ship."""
    return ValidationReport("0.1.0", None, None, tolerance={"cosine": None},
                            sections=[Section("folds", "5-fold validation", skipped="3 held-out samples cannot "
                                              "fill 5 folds <&>"), Section("held_out", "Held-out samples")])


EXPECTED_PLOTS = {"held_out": 3, "folds": 2, "shifts": 4, "environments": 1, "performance": 1, "custom<&>": 0}


class _Page(HTMLParser):
    """Tags, text, external references and plots per ``<section data-section>`` of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.text: list[str] = []
        self.external: list[str] = []
        self.plots: Counter[str] = Counter()
        self.plot_titles: list[str] = []
        self.unlabelled = 0
        self.section = ""
        self._in_svg_title = False
        self._svg_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        values = dict(attrs)
        self.external += [v for v in values.values() if v and re.search(r"https?://|url\(|//[a-z]", v)]
        if tag == "section":
            self.section = values.get("data-section") or ""
        if tag == "svg" and "plot" in (values.get("class") or "").split():
            self.plots[self.section] += 1
            self.unlabelled += not values.get("aria-label")
            self._svg_depth = 1
        elif self._svg_depth and tag == "title":
            self._in_svg_title = self._svg_depth == 1
        if self._svg_depth and tag != "svg":
            self._svg_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = ""
        if self._svg_depth:
            self._svg_depth -= 1
        if tag == "title":
            self._in_svg_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_svg_title:
            self.plot_titles.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def test_optimize_page_structure_and_escaping() -> None:
    page = optimize_page(optimize_report())
    parsed = parse(page)
    text = "".join(parsed.text)
    assert sum(parsed.plots.values()) == 5 == len(parsed.plot_titles), "goal, timeline, sizes, 2 passes' units"
    assert "Goal: latency" in text and "low-rank" in parsed.text and text.count(EVIL) >= 2, "plot label and row"
    assert parsed.unlabelled == 0
    assert parsed.tags["blink"] == 0 and parsed.tags["tiny"] == 0 and parsed.tags["script"] == 1
    assert "models/<tiny>&net.onnx" in text and "/encoder/layer.1/MatMul<1>&W" in text and EVIL in text
    assert "&amp;amp;" in page and "<blink>" not in page
    assert not parsed.external and "http://" not in page and "https://" not in page
    assert "Showing the first 80 of 95 units" in text
    for status in ("applied", "narrowed", "rolled back", "skipped"):
        assert f">{status}</span>" in page
    assert parsed.tags["details"] >= 3 and "nothing to change (12 of 12 skipped: no zeros)" in text
    assert "4.6 MB → 1.8 MB (-60.4%)" in text


def test_validation_page_structure_and_escaping() -> None:
    report = validation_report()
    page = validation_page(report)
    parsed = parse(page)
    text = "".join(parsed.text)
    assert dict(parsed.plots) == {k: v for k, v in EXPECTED_PLOTS.items() if v}
    assert parsed.unlabelled == 0 and len(parsed.plot_titles) == sum(EXPECTED_PLOTS.values())
    assert not report.passed and "do not ship" in text and "failed: Shifted inputs, Stability across" in text
    assert "can ship" not in text.replace("do not ship", "")
    assert "A custom <section> & friends" in text and "provider=Fake<&>EP" in text and "<timeout>" in text
    assert parsed.tags["blink"] == 0 and parsed.tags["no"] == 0 and parsed.tags["script"] == 1
    assert not parsed.external and "http://" not in page and "https://" not in page
    assert text.count("FAIL") >= 4 and "SKIPPED" not in text
    assert "×0.396" in text and "1.8 MB" in text and "–" in text


def test_pages_print_values_as_a_reader_writes_them() -> None:
    """No Python reprs, intervals beside their figure (the held-out table fits the page), one label per axis."""
    text = "".join(parse(validation_page(validation_report())).text)
    assert "cosine [interval]" in text and "0.99962[0.9995, 0.99971]" in text and "cosine low" not in text
    assert "accuracy optimized [interval]" in text and "0.905[0.88, 0.93]" in text and "accuracy low" not in text
    assert "data: labelsyes" in text and "True" not in text
    assert "contrast factor" in text and "scale factor" in text and "offset (σ)" in text
    text = "".join(parse(optimize_page(optimize_report())).text)
    assert "providers CPUExecutionProvider; intra op threads 1; graph optimization all" in text
    assert "['" not in text and "('" not in text and "max|Δ| 0.002" in text


def test_skipped_and_empty_sections_render() -> None:
    parsed = parse(validation_page(skipped_report()))
    text = "".join(parsed.text)
    assert "can ship" in text and "do not ship" not in text
    assert "SKIPPED" in text and "3 held-out samples cannot fill 5 folds <&>" in text and "no checks" in text
    assert sum(parsed.plots.values()) == 0


def test_empty_report_renders() -> None:
    parsed = parse(optimize_page(Report(graphopt_version="0.1.0")))
    assert "no pass ran" in "".join(parsed.text) and sum(parsed.plots.values()) == 0


@functools.cache
def _chromium() -> str:
    """The Chromium binary, or a skip: none installed, or one that cannot even print its version (a snap stub)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("chromium not installed: apt-get install chromium")
    try:
        probe = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                               check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"chromium at {found} does not start: {e}")
    if probe.returncode != 0:
        pytest.skip(f"chromium at {found} does not start: {probe.stderr.strip()[:200]}")
    return found


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)


def _page_errors(stderr: str, page: Path) -> list[str]:
    """Console lines of the page (it logs nothing, so any is a fault) and uncaught exceptions."""
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or ("CONSOLE" in line and page.name in line)]


@pytest.mark.parametrize("which", ["optimize", "validate"])
def test_page_renders_in_chromium(which: str, tmp_path: Path) -> None:
    page = optimize_page(optimize_report()) if which == "optimize" else validation_page(validation_report())
    plots = sum(parse(page).plots.values())
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    done = _run_chromium(tmp_path, "--dump-dom", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert plots > 0 and f'data-rendered="{plots}"' in done.stdout, done.stderr[-2000:]
    assert not _page_errors(done.stderr, path)


def test_chromium_reports_a_script_error(tmp_path: Path) -> None:
    """The checks above would notice a failing script: a broken page logs an error and sets no count."""
    page = optimize_page(optimize_report()).replace("<script>", '<script>console.error("boom"); null.crash();', 1)
    path = tmp_path / "broken.html"
    path.write_text(page, encoding="utf-8")
    done = _run_chromium(tmp_path, "--dump-dom", path.as_uri())
    errors = _page_errors(done.stderr, path)
    assert "data-rendered" not in done.stdout and any("boom" in e for e in errors) and any("Uncaught" in e for e in errors)


_MEASURE = """<script>
const wide = [...document.querySelectorAll("section")].filter(
  s => [...s.querySelectorAll(".wrap")].some(w => w.scrollWidth > w.clientWidth + 1)).map(s => s.dataset.section);
const narrow = [...document.querySelectorAll("svg.plot")].filter(
  p => p.getBoundingClientRect().width < 0.45 * p.parentElement.clientWidth).length;
document.body.dataset.layout = JSON.stringify({wide, narrow});
</script></body>"""


def test_tables_fit_and_plots_fill_the_page_in_chromium(tmp_path: Path) -> None:
    """At 1280 pixels the held-out table needs no horizontal scroll, and no plot is left at less than half of its
    row's width (plots grow to fill their row, two to a row at most)."""
    path = tmp_path / "page.html"
    path.write_text(validation_page(validation_report()).replace("</body>", _MEASURE, 1), encoding="utf-8")
    done = _run_chromium(tmp_path, "--window-size=1280,2400", "--dump-dom", path.as_uri())
    found = re.search(r'data-layout="([^"]*)"', done.stdout)
    assert done.returncode == 0 and found, done.stderr[-2000:]
    layout = json.loads(unescape(found.group(1)))
    assert "held_out" not in layout["wide"] and layout["narrow"] == 0, layout


def test_screenshot(tmp_path: Path) -> None:
    path, shot = tmp_path / "page.html", tmp_path / "page.png"
    path.write_text(validation_page(validation_report()), encoding="utf-8")
    done = _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                         "--hide-scrollbars", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000
