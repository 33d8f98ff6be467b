"""``graphopt fleet``: every model of a manifest optimised and verified on a process pool or as Ray tasks, a failing
one a row of its own (exit 8), and a re-run, also after a kill, skipping the outputs that are up to date."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import onnx
import pytest
import ray
from helpers import EXAMPLES

from graphopt.cli import main
from graphopt.fleet import ManifestError, read_manifest
from graphopt.provenance import read_provenance
from graphopt.report.html import fleet_page
from graphopt.report.model import FleetReport, FleetRow

MODEL, DATA = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits.npz"
INT8 = "qdq-int8{speed_check=note}"
"""int8 kept whatever it timed: on a loaded machine the digits CNN's int8 can time slower than its float and be
declined, and what these tests check is the fleet, not the speed gate."""


def _manifest(folder: Path, *tables: str) -> Path:
    path = folder / "fleet.toml"
    path.write_text("\n".join(f"[[model]]\n{table}\n" for table in tables))
    return path


def _fleet(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["fleet", *args], out=out)
    return code, out.getvalue()


def test_three_models_on_two_workers_one_failing_then_a_rerun_skips_what_is_up_to_date(tmp_path: Path) -> None:
    """Two digits runs finish and the broken model is a row with its one-line reason (exit 8); run again, the two
    outputs are up to date and left as they are; a changed budget makes its model run again."""
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    int8 = f'name = "int8"\nmodel = "{MODEL}"\ndata = "{DATA}"\npasses = "{INT8}"'
    manifest = _manifest(tmp_path, int8, f'name = "lossless"\nmodel = "{MODEL}"\ndata = "{DATA}"',
                         f'model = "broken.onnx"\ndata = "{DATA}"')
    out, report, page = tmp_path / "out", tmp_path / "fleet.json", tmp_path / "fleet.html"
    code, table = _fleet(str(manifest), "-o", str(out), "--workers", "2", "--report", str(report), "--html", str(page))
    assert code == 8, table
    assert f"wrote {report}, {page}" in " ".join(table.split())
    fleet = json.loads(report.read_text())
    assert fleet["schema"] == "graphopt.fleet/1" and fleet["workers"] == 2
    rows = {row["name"]: row for row in fleet["models"]}
    assert [row["name"] for row in fleet["models"]] == ["int8", "lossless", "broken"], "manifest order"
    assert rows["int8"]["status"] == rows["lossless"]["status"] == "optimized"
    assert rows["broken"]["status"] == "failed" and "not a readable ONNX model" in rows["broken"]["reason"]
    assert "\n" not in rows["broken"]["reason"]
    assert rows["int8"]["pipeline"].startswith("qdq-int8"), "qdq-int8, or its layers-only variant where it timed faster"
    assert rows["int8"]["size_ratio"] < 0.5
    assert rows["int8"]["cosine"] > 0.99 and rows["int8"]["latency_ratio"] > 0
    assert fleet["counts"] == {"optimized": 2, "up to date": 0, "failed": 1}
    assert "broken" in table and "failed" in table
    _assert_self_contained(page.read_text(encoding="utf-8"), ["int8", "lossless", "broken"], rows["broken"]["reason"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "fleet.html", "fleet.json", "fleet.toml",
                                                           "out"], "one page, no assets or staging beside it"
    made = {name: (out / f"{name}.onnx").stat().st_mtime_ns for name in ("int8", "lossless")}
    provenance = read_provenance(onnx.load(out / "int8.onnx"))
    assert provenance is not None and provenance.input_digest
    assert json.loads(provenance.request)["passes"] == INT8

    code, _ = _fleet(str(manifest), "-o", str(out), "--workers", "2", "--report", str(report))
    rows = {row["name"]: row for row in json.loads(report.read_text())["models"]}
    assert code == 8 and rows["int8"]["status"] == rows["lossless"]["status"] == "up to date"
    assert rows["int8"]["size_ratio"] < 0.5 and rows["int8"]["cosine"] > 0.99, "figures read from its report"
    assert {name: (out / f"{name}.onnx").stat().st_mtime_ns for name in made} == made, "outputs left as they were"

    manifest = _manifest(tmp_path, f"{int8}\ncosine = 0.995", f'name = "lossless"\nmodel = "{MODEL}"\ndata = "{DATA}"')
    code, _ = _fleet(str(manifest), "-o", str(out), "--report", str(report))
    rows = {row["name"]: row for row in json.loads(report.read_text())["models"]}
    assert code == 0 and rows["int8"]["status"] == "optimized" and rows["lossless"]["status"] == "up to date"


def test_the_same_fleet_as_ray_tasks_on_ray_started_here(tmp_path: Path) -> None:
    """``--ray local`` starts Ray in this process, runs each model as a task asking for its threads as CPUs (two at
    once on two workers), isolates the broken model the same way and stops Ray after."""
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    manifest = _manifest(tmp_path, f'name = "int8"\nmodel = "{MODEL}"\ndata = "{DATA}"\npasses = "{INT8}"',
                         f'name = "lossless"\nmodel = "{MODEL}"\ndata = "{DATA}"', f'model = "broken.onnx"\ndata = "{DATA}"')
    report = tmp_path / "fleet.json"
    code, table = _fleet(str(manifest), "-o", str(tmp_path / "out"), "--ray", "local", "--workers", "2",
                         "--report", str(report))
    fleet = json.loads(report.read_text())
    rows = {row["name"]: row for row in fleet["models"]}
    assert code == 8 and fleet["executor"] == "Ray tasks (local)", table
    assert rows["int8"]["status"] == rows["lossless"]["status"] == "optimized"
    assert rows["broken"]["status"] == "failed" and "not a readable ONNX model" in rows["broken"]["reason"]
    assert rows["int8"]["pipeline"].startswith("qdq-int8") and rows["int8"]["cosine"] > 0.99
    assert not ray.is_initialized(), "the Ray it started is stopped"


def test_a_killed_fleet_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Killed (SIGKILL) once its first model's output is written, the fleet's re-run finds that output up to date
    and optimises the rest."""
    names = ("first", "second", "third")
    manifest = _manifest(tmp_path, *(f'name = "{n}"\nmodel = "{MODEL}"\ndata = "{DATA}"\npasses = "qdq-int8"'
                                     for n in names))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "graphopt", "-q", "fleet", str(manifest), "-o", str(out), "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "first.report.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "first.report.json").exists(), process.stderr.read().decode() if process.stderr else ""
    assert not (out / "third.onnx").exists(), "killed before the fleet finished"
    report = tmp_path / "fleet.json"
    code, _ = _fleet(str(manifest), "-o", str(out), "--workers", "1", "--report", str(report))
    rows = {row["name"]: row["status"] for row in json.loads(report.read_text())["models"]}
    assert code == 0 and rows["first"] == "up to date" and rows["third"] == "optimized"
    for name in names:
        onnx.checker.check_model(onnx.load(out / f"{name}.onnx"))


@pytest.mark.parametrize(("table", "message"), [
    ('model = "m.onnx"', "data = \"PATH\" is required"),
    ('model = "m.onnx"\ndata = "d.npz"\ncosin = 0.9', "unknown key 'cosin'"),
    ('model = "m.onnx"\ndata = "d.npz"\npasses = "qdq-int8"\ngoal = "latency"', "passes or goal, not both"),
    ('model = "m.onnx"\ndata = "d.npz"\ngoal = "speed"', "goal takes one of"),
    ('model = "m.onnx"\ndata = "d.npz"\npasses = "no-such-pass"', "no-such-pass"),
    ('model = "m.onnx"\ndata = "d.npz"\ncosine = 1.5', "cosine"),
])
def test_a_malformed_manifest_is_one_line_and_exit_2_before_any_model_runs(tmp_path: Path, table: str,
                                                                          message: str) -> None:
    manifest = _manifest(tmp_path, table)
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest, tmp_path / "out")
    code, _ = _fleet(str(manifest), "-o", str(tmp_path / "out"))
    assert code == 2 and not (tmp_path / "out").exists()


def test_two_models_that_would_write_one_output_are_refused(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, f'model = "{MODEL}"\ndata = "{DATA}"', f'model = "{MODEL}"\ndata = "{DATA}"')
    with pytest.raises(ManifestError, match="would both write digits_cnn.onnx"):
        read_manifest(manifest, tmp_path)


def _assert_self_contained(page: str, names: list[str], reason: str) -> None:
    """One page that loads nothing (no ``src``, no ``href``, no ``url(``): each model named, the failed one's reason
    escaped, and the three charts (size, latency, task time) as inline SVG."""
    assert page.startswith("<!DOCTYPE html>") and not re.search(r"\b(?:src|href)\s*=|url\(|https?://", page)
    assert all(f"<td>{escape(name)}</td>" in page for name in names)
    assert escape(reason) in page and page.count('<svg class="plot"') == 3


def test_the_page_escapes_what_the_manifest_and_the_models_say() -> None:
    """Names and reasons come from files the user did not write: escaped, and a missing or NaN figure is "–"."""
    rows = (FleetRow("a<b>&c", "optimized", output="/o/a.onnx", pipeline="qdq-int8{mode=<x>}", size_ratio=0.26,
                     latency_ratio=float("nan"), cosine=0.9996, seconds=12.5),
            FleetRow("<i>x</i>", "failed", "reading <script>alert(1)</script> & failing", seconds=float("inf")))
    page = fleet_page(FleetReport("in<&>.toml", "out/", "processes", 2, 4, rows, 13.0, {}, ("latency: <timed>",)))
    _assert_self_contained(page, ["a<b>&c", "<i>x</i>"], "reading <script>alert(1)</script> & failing")
    assert "<script>alert" not in page and "<i>" not in page and "<b>" not in page
    assert "in&lt;&amp;&gt;.toml" in page and "latency: &lt;timed&gt;" in page and "mode=&lt;x&gt;" in page
    assert ">0.260×<" in page and ">–<" in page and "1 optimized, 0 up to date, 1 failed (2 models)" in page
    assert '<span class="badge failed">failed</span>' in page


@pytest.mark.parametrize("target", ["manifest", "model", "data", "report", "output"])
def test_the_page_never_overwrites_an_input_nor_another_output(tmp_path: Path, target: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--html`` onto the manifest, a model, its data, the ``--report`` or a model's output is refused before any
    model runs, one line and exit 4, as ``--report`` is; nothing is written, not even the output folder."""
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL.read_bytes())
    manifest = _manifest(tmp_path, f'model = "m.onnx"\ndata = "{DATA}"')
    out, report = tmp_path / "out", tmp_path / "fleet.json"
    paths = {"manifest": manifest, "model": model, "data": DATA, "report": report, "output": out / "m.onnx"}
    before = {p: p.read_bytes() for p in (manifest, model, DATA)}
    for flags in (["--report", str(report), "--html", str(paths[target])], ["--report", str(paths[target])]):
        if flags[-1] == str(report):
            continue  # --report onto itself is no collision
        code, table = _fleet(str(manifest), "-o", str(out), *flags)
        err = capsys.readouterr().err
        assert code == 4 and table == "" and err.count("\n") == 1 and "refusing to write" in err, err
        assert not out.exists() and not report.exists()
    assert {p: p.read_bytes() for p in before} == before
