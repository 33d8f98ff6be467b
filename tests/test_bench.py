"""``graphopt bench``: the machine's facts on x86 and Arm (parsers tested on captured ``/proc/cpuinfo`` text), and
the command end to end on the bundled digits CNN with two pipelines: table, JSON and HTML. The figures themselves
are not asserted against each other (timings belong in ``benchmarks/``), only that each is measured and sane."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, digits
from test_report_html import _run_chromium, parse

import graphopt
from graphopt import benchmark, machine
from graphopt.cli import main
from graphopt.errors import UsageError
from graphopt.report.render import format_duration

# The first CPU of this project's AVX-512 kind (AMD EPYC, Zen 4), as /proc/cpuinfo printed it (bugs and power lines
# dropped); then two Arm machines as Linux prints them (first CPU): an AWS Graviton2 (Neoverse-N1: no "model name"
# line, the core only by its part number) and a Raspberry Pi 4 (Cortex-A72, named by the board's "Model" line).
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: 2596.128
cache size\t: 1024 KB
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx \
f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext cpuid_fault \
vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt \
clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr arat avx512vbmi \
umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
bogomips\t: 5192.25
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""
RASPBERRY_PI_4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_the_machine_is_named_with_its_int8_and_bf16_features_on_x86_and_arm() -> None:
    assert machine.parse_cpu_model(EPYC) == "AMD EPYC"
    features = machine.cpu_features(machine.parse_cpu_flags(EPYC))
    assert features["AVX-512 VNNI"] and features["AVX-512 BF16"] and features["AVX2"] and not features["AMX-INT8"]
    assert machine.parse_cpu_model(GRAVITON2) == "Arm Neoverse-N1"
    graviton = machine.cpu_features(machine.parse_cpu_flags(GRAVITON2))
    assert graviton == {"NEON": True, "dot product": True, "i8mm": False, "FP16": True, "BF16": False, "SVE": False,
                        "SVE2": False}
    assert machine.parse_cpu_model(RASPBERRY_PI_4) == "Raspberry Pi 4 Model B Rev 1.4"
    pi = machine.cpu_features(machine.parse_cpu_flags(RASPBERRY_PI_4))
    assert pi["NEON"] and not pi["dot product"] and not pi["FP16"]
    unknown = GRAVITON2.replace("0xd0c", "0xfff").replace("0x41", "0xc0")
    assert machine.parse_cpu_model(unknown) == "Arm CPU (implementer 0xc0, part 0xfff)"
    assert machine.parse_cpu_model("") == ""


def test_bench_times_models_and_pipelines_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pipelines on the digits CNN, one and two threads, batch 8: a row each with every figure, the fidelity
    of each pipeline's model, a table that fits 100 columns, the JSON and a page with its bar plots."""
    monkeypatch.setenv("COLUMNS", "100")
    report, page = tmp_path / "bench.json", tmp_path / "bench.html"
    code = main(["bench", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(EXAMPLES / "digits.npz"), "--passes",
                 "zero-weight-elimination; weight-clustering{clusters=16,min_size=64}", "--threads", "1,2",
                 "--batch-sizes", "1,8", "--runtime", "onnxruntime", "--runs", "30", "--budget", "0.3",
                 "--report", str(report), "--html", str(page)])
    stdout = capsys.readouterr().out
    assert code == 0
    lines = stdout.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert lines[0].startswith(machine.cpu_model()) and f"onnxruntime {ort.__version__}" in stdout
    assert "\nonnxruntime:\n" in stdout and "digits_cnn: weight-clustering{clus" in stdout, "a long name wraps"
    flat = " ".join(stdout.split())  # the details wrap at the width
    assert "throughput with 2 threads: batch 8" in flat and "1.000×" in flat and "peak memory" in flat

    body = json.loads(report.read_text())
    assert body["schema"] == "graphopt.bench/1" and body["settings"]["threads"] == [1, 2]
    assert set(body["machine"]["features"]) == {name for name, _ in machine.FEATURES["x86"]} or \
        set(body["machine"]["features"]) == {name for name, _ in machine.FEATURES["arm"]}
    rows = body["rows"]
    assert [(r["model"], r["variant"], r["runtime"]) for r in rows] == [
        ("digits_cnn", "original", "onnxruntime"), ("digits_cnn", "zero-weight-elimination", "onnxruntime"),
        ("digits_cnn", "weight-clustering{clusters=16,min_size=64}", "onnxruntime")]
    for row in rows:
        timings = {(t["threads"], t["batch"]): t for t in row["timings"]}
        assert set(timings) == {(1, 1), (2, 1), (2, 8)} and row["error"] == ""
        assert all(0 < t["median_ms"] <= t["p90_ms"] <= t["p99_ms"] and t["runs"] >= 20 for t in timings.values())
        assert row["load_ms"] > 0 and row["peak_memory_bytes"] > 0 and row["size_bytes"] > 0
    assert rows[0]["cosine"] is None and rows[1]["status"] == "kept zero-weight-elimination"
    assert rows[1]["cosine"] >= 0.99999 and rows[1]["size_bytes"] < rows[0]["size_bytes"], "lossless, zeros gone"
    clustered = rows[2]
    assert clustered["status"].startswith("kept weight-clustering") and 0.99 <= clustered["cosine"] < 1.0
    assert clustered["size_bytes"] < rows[1]["size_bytes"], "4-bit indices and a codebook"

    parsed = parse(page.read_text())
    text = "".join(parsed.text)
    assert sum(parsed.plots.values()) == 2 and parsed.unlabelled == 0, "latency and throughput bars"
    assert "graphopt bench" in text and ("AVX" in text or "NEON" in text)
    assert "cos 0.99" in text and "kept weight-clustering" in text


def test_the_bench_page_fits_the_window_in_chromium(tmp_path: Path) -> None:
    """Every figure of the bench table is visible at 1280 pixels: no table scrolls sideways."""
    page = tmp_path / "bench.html"
    model, data = digits(400)
    result = graphopt.bench([model], data, passes="weight-clustering{clusters=16,min_size=64}", threads=[1, 2],
                            batch_sizes=[1, 8], runtimes=["onnxruntime"], runs=20, budget_s=0.2, html=page)
    assert result.report.rows[1].status.startswith("kept weight-clustering"), result.report.rows[1]
    measure = ('<script>document.body.dataset.wide = String([...document.querySelectorAll(".wrap")].filter('
               "w => w.scrollWidth > w.clientWidth + 1).length);</script></body>")
    page.write_text(page.read_text().replace("</body>", measure, 1))
    done = _run_chromium(tmp_path, "--window-size=1280,1600", "--dump-dom", page.as_uri())
    assert done.returncode == 0 and 'data-wide="0"' in done.stdout, done.stderr[-2000:]


def test_bench_api_on_a_loaded_model_and_random_data() -> None:
    """The API takes loaded models and 'random' data (no pipeline to verify); a model's ratio to itself is 1."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    result = graphopt.bench([model, model], threads=[1], batch_sizes=[1], runs=20, budget_s=0.2, memory=False,
                            runtimes=["onnxruntime"])
    first, second = result.report.rows
    assert (first.model, second.model) == ("model1", "model2") and first.variant == second.variant == "original"
    assert result.report.ratio(first) == 1.0 and first.peak_memory_bytes is None
    assert result.report_path is None and result.html_path is None


def test_bench_json_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", str(EXAMPLES / "digits_cnn.onnx"), "--threads", "1", "--batch-sizes", "1", "--runtime",
                 "onnxruntime", "--runs", "20", "--budget", "0.2", "--no-memory", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["schema"] == "graphopt.bench/1" and body["settings"]["data"] == "random"
    (row,) = body["rows"]
    assert row["timings"][0]["median_ms"] > 0 and row["peak_memory_bytes"] is None


def test_a_model_that_cannot_run_costs_only_its_own_figures() -> None:
    """One call times every model; when it fails, each model is timed alone and the one that fails says why."""
    good, bad = onnx.ModelProto(), onnx.ModelProto()
    bad.doc_string = "bad"

    def measure(models: list[onnx.ModelProto]) -> list[float]:
        if any(m.doc_string == "bad" for m in models):
            raise RuntimeError("cannot run it\nsecond line")
        return [1.0 for _ in models]

    assert benchmark._each([good, bad, good], measure) == [(1.0, ""), (None, "cannot run it"), (1.0, "")]


def test_bench_refuses_bad_requests_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(EXAMPLES / "digits_cnn.onnx"), str(EXAMPLES / "digits.npz")
    for argv, code, message in (
            (["--runtime", "tpu"], 2, "unknown runtime 'tpu'"),
            (["--threads", "one"], 2, "--threads takes whole numbers"),
            (["--passes", "no-such-pass"], 2, "no-such-pass"),
            (["--report", model], 4, "it is a model"),
            (["--report", data], 4, "it is a data file")):
        assert main(["bench", model, "--data", data, *argv]) == code, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    other = tmp_path / "other.onnx"
    wide = onnx.load(model)
    wide.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 9
    onnx.save(wide, other)
    assert main(["bench", model, str(other), "--data", data]) == 2
    assert "takes other inputs" in capsys.readouterr().err
    with pytest.raises(UsageError, match="at least one model"):
        graphopt.bench([])


def test_bench_in_openvino_when_it_is_installed() -> None:
    pytest.importorskip("openvino")
    model, data = digits(32)
    result = graphopt.bench([model], data, threads=[1], batch_sizes=[1, 8], runs=20, budget_s=0.2, memory=False,
                            runtimes=["openvino"])
    (row,) = result.report.rows
    assert row.runtime == "openvino" and row.error == "" and row.load_ms is None
    assert {(t.threads, t.batch) for t in row.timings} == {(1, 1), (1, 8)}
    assert all(t.median_ms is not None and np.isfinite(t.median_ms) for t in row.timings)


@pytest.mark.parametrize(("ms", "text"), [(0.01522, "15.2 µs"), (0.8028, "803 µs"), (1.315, "1.315 ms"),
                                          (24_100.0, "24.1 s"), (None, "-"), (float("nan"), "-")])
def test_durations_read_in_their_unit(ms: float | None, text: str) -> None:
    assert format_duration(ms) == text
