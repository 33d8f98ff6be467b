"""Peak memory of graphopt on a model of 2–4 GB: does it stay within 2.5× the model's size?

The model is GPT-2 large's architecture (36 pre-LayerNorm decoder blocks, width 1280, 20 heads, MLP 5120, a
50,257-token vocabulary with its own output projection, as ONNX exports untie it) with random weights drawn at
GPT-2's initialisation scale (normal, std 0.02; the residual projections scaled by 1/√(2·layers)), saved with
external data (3.35 GB). ``build`` writes it one tensor at a time, so the script never holds the model; it is
cached in ``~/.cache/graphopt-bench/big``. The samples are 32-token windows of byte-valued ids from this project's
own README (a real text, each byte a token).

Each pass runs ``graphopt optimize`` on the model in a fresh process; the table gives that process's peak resident
set size (``VmHWM``) over the model's size, the wall time and the pass's status.

    python benchmarks/bench_big_model.py                      # int4-weights, weight-clustering, dynamic int8
    python benchmarks/bench_big_model.py --layers 12          # a smaller model of the same widths (1.35 GB)

Not part of CI: it needs 7 GB of disk for the model and one output, about 7 GB of memory, and took about 15 minutes
for int4-weights, 31 for weight-clustering and 2 for dynamic int8 on 2 cores (AVX-512 kind, 2026-12-06).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from harness import write
from onnx import TensorProto, helper
from workloads import CACHE, ROOT, machine

PASSES = ("int4-weights", "weight-clustering", "qdq-int8{mode=dynamic}")
ALIGNMENT = 4096


@dataclass(frozen=True)
class Shapes:
    """A GPT-2 decoder's sizes (GPT-2 large by default)."""

    layers: int = 36
    width: int = 1280
    heads: int = 20
    vocabulary: int = 50257
    positions: int = 1024
    sequence: int = 32

    @property
    def folder(self) -> Path:
        return CACHE / "big" / f"gpt2-{self.layers}x{self.width}-s{self.sequence}"


class _Writer:
    """Initializers written one at a time to one external data file, each at a 4 KiB-aligned offset."""

    def __init__(self, data: Path, seed: int = 0) -> None:
        self.path = data
        self.file = open(data, "wb")  # noqa: SIM115 - closed by ``close``
        self.rng = np.random.default_rng(seed)
        self.tensors: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        self.file.write(b"\0" * (-self.file.tell() % ALIGNMENT))
        offset = self.file.tell()
        np.ascontiguousarray(array).tofile(self.file)
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", offset), ("length", array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        self.tensors.append(tensor)
        return name

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.add(name, (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)))

    def constant(self, name: str, array: np.ndarray) -> str:
        """A small tensor kept inside the model."""
        self.tensors.append(onnx.numpy_helper.from_array(array, name))
        return name

    def close(self) -> None:
        self.file.close()


def build(shapes: Shapes, folder: Path) -> Path:
    """Write the decoder to ``folder/model.onnx`` with its weights in ``model.onnx.data``; returns the model's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    w = _Writer(folder / "model.onnx.data")
    d, heads, s = shapes.width, shapes.heads, shapes.sequence
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def layer_norm(x: str, prefix: str) -> str:
        scale = w.constant(f"{prefix}.weight", np.ones(d, np.float32))
        bias = w.constant(f"{prefix}.bias", np.zeros(d, np.float32))
        return node("LayerNormalization", [x, scale, bias], f"{prefix}.out", axis=-1, epsilon=1e-5)

    def linear(x: str, prefix: str, k: int, n: int, std: float) -> str:
        weight = w.normal(f"{prefix}.weight", (k, n), std)
        bias = w.constant(f"{prefix}.bias", np.zeros(n, np.float32))
        return node("Add", [node("MatMul", [x, weight], f"{prefix}.matmul"), bias], f"{prefix}.out")

    head_shape = w.constant("head_shape", np.array([0, s, heads, d // heads], np.int64))
    merged_shape = w.constant("merged_shape", np.array([0, s, d], np.int64))
    mask = w.constant("causal_mask", np.triu(np.full((s, s), -1e4, np.float32), 1))
    scale = w.constant("attention_scale", np.array(1 / math.sqrt(d // heads), np.float32))
    half, root2 = w.constant("half", np.array(0.5, np.float32)), w.constant("sqrt2", np.array(math.sqrt(2), np.float32))
    one = w.constant("one", np.array(1.0, np.float32))
    tokens = node("Gather", [w.normal("wte", (shapes.vocabulary, d), 0.02), "input_ids"], "token_embedding")
    positions = node("Gather", [w.normal("wpe", (shapes.positions, d), 0.01),
                                w.constant("position_ids", np.arange(s, dtype=np.int64))], "position_embedding")
    x = node("Add", [tokens, positions], "embedding")
    residual_std = 0.02 / math.sqrt(2 * shapes.layers)
    for i in range(shapes.layers):
        p = f"h{i}"
        qkv = linear(layer_norm(x, f"{p}.ln_1"), f"{p}.attn.c_attn", d, 3 * d, 0.02)
        q, k, v = (f"{p}.{n}" for n in "qkv")
        nodes.append(helper.make_node("Split", [qkv, w.constant(f"{p}.split", np.array([d] * 3, np.int64))],
                                      [q, k, v], name=f"{p}.split", axis=-1))
        q, k, v = (node("Transpose", [node("Reshape", [t, head_shape], f"{t}.heads")], f"{t}.t", perm=[0, 2, 1, 3])
                   for t in (q, k, v))
        kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
        scores = node("Add", [node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), scale], f"{p}.scaled"), mask],
                      f"{p}.masked")
        context = node("MatMul", [node("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.context")
        merged = node("Reshape", [node("Transpose", [context], f"{p}.context.t", perm=[0, 2, 1, 3]), merged_shape],
                      f"{p}.merged")
        x = node("Add", [x, linear(merged, f"{p}.attn.c_proj", d, d, residual_std)], f"{p}.attn.residual")
        hidden = linear(layer_norm(x, f"{p}.ln_2"), f"{p}.mlp.c_fc", d, 4 * d, 0.02)
        erf = node("Erf", [node("Div", [hidden, root2], f"{p}.mlp.scaled")], f"{p}.mlp.erf")
        gelu = node("Mul", [node("Mul", [hidden, half], f"{p}.mlp.half"), node("Add", [erf, one], f"{p}.mlp.erf1")],
                    f"{p}.mlp.gelu")
        x = node("Add", [x, linear(gelu, f"{p}.mlp.c_proj", 4 * d, d, residual_std)], f"{p}.mlp.residual")
    final = layer_norm(x, "ln_f")
    nodes.append(helper.make_node("MatMul", [final, w.normal("lm_head", (d, shapes.vocabulary), 0.02)], ["logits"],
                                  name="lm_head"))
    w.close()
    graph = helper.make_graph(nodes, "gpt2", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", s])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", s, shapes.vocabulary])],
                              w.tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_big_model")
    model.ir_version = 8
    onnx.save_model(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def model_bytes(path: Path) -> int:
    """The model's size on disk: the ``.onnx`` and its external data."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def samples(shapes: Shapes, count: int, path: Path) -> Path:
    """``count`` windows of ``shapes.sequence`` byte-valued tokens of the README, as ``input_ids`` in an ``.npz``."""
    text = np.frombuffer((ROOT / "README.md").read_bytes(), np.uint8).astype(np.int64)
    starts = np.linspace(0, text.size - shapes.sequence, count).astype(np.int64)
    np.savez(path, input_ids=np.stack([text[i:i + shapes.sequence] for i in starts]))
    return path


def measure(model: Path, data: Path, passes: str, out: Path) -> dict[str, Any]:
    """``graphopt.optimize`` in a fresh process; its peak RSS (``VmHWM``), status, seconds and output size."""
    began = time.perf_counter()
    report = out.with_suffix(".report.json")
    done = subprocess.run([sys.executable, __file__, "--child", str(model), str(data), passes, str(out)],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300], "seconds": seconds}
    row = dict(json.loads(lines[-1]))
    row["seconds"] = seconds
    row["output_bytes"] = model_bytes(out) if out.exists() else None
    report.unlink(missing_ok=True)
    for path in out.parent.iterdir():
        if path.name.startswith(out.name):
            path.unlink()
    return row


def child(model: str, data: str, passes: str, out: str) -> dict[str, Any]:
    from bench_memory import peak_rss_mb

    import graphopt

    result = graphopt.optimize(model, data, passes=passes, output=out)
    outcome = next(o for o in result.pipeline.outcomes if o.pass_name == passes.split("{")[0])
    return {"peak_rss_mb": peak_rss_mb(), "status": outcome.status.value, "reason": outcome.reason[:200]}


def render(shapes: Shapes, size: int, rows: dict[str, dict[str, Any]], info: dict[str, Any], command: str,
           wall: float) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    mb = size / 2**20
    lines = [f"# Peak memory on a {size / 1e9:.2f} GB model ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores, {info.get('memory', '?')}; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
              f"graphopt {info['graphopt']}, Python {info['python']}"),
             f"- command: `{command}`; wall time {wall:.0f} s", "",
             (f"GPT-2-large-shaped decoder ({shapes.layers} layers, width {shapes.width}, vocabulary "
              f"{shapes.vocabulary:,}, sequence {shapes.sequence}) with random weights, {mb:,.0f} MiB with external "
              "data. Each row is one `graphopt optimize` in a fresh process: its peak RSS (VmHWM) over the model's "
              "size; the budget is 2.5×."), "",
             "| pass | status | peak RSS | / model size | output size | seconds |", "|---|---|---:|---:|---:|---:|"]
    for passes, row in rows.items():
        if "error" in row:
            lines.append(f"| {passes} | error: {row['error']} | – | – | – | {row['seconds']:.0f} |")
            continue
        output = f"{row['output_bytes'] / 2**20:,.0f} MiB" if row.get("output_bytes") else "–"
        lines.append(f"| {passes} | {row['status']} | {row['peak_rss_mb']:,.0f} MiB | "
                     f"{row['peak_rss_mb'] / mb:.2f}× | {output} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36, help="decoder blocks (36: GPT-2 large, 3.35 GB)")
    parser.add_argument("--samples", type=int, default=64, help="32-token samples (half calibrate, half verify)")
    parser.add_argument("--passes", default=";".join(PASSES), help="semicolon-separated pipelines, one run each")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    shapes = Shapes(layers=args.layers)
    began = time.perf_counter()
    path = shapes.folder / "model.onnx"
    if not path.exists():
        print(f"building {path} …", flush=True)
        build(shapes, shapes.folder)
    size = model_bytes(path)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-big-") as folder:
        data = samples(shapes, args.samples, Path(folder) / "samples.npz")
        for passes in args.passes.split(";"):
            rows[passes] = measure(path, data, passes, Path(folder) / "out.onnx")
            print(f"{passes}: {rows[passes]}", flush=True)
    info = machine()
    command = "python benchmarks/bench_big_model.py " + " ".join(sys.argv[1:])
    markdown = render(shapes, size, rows, info, command, time.perf_counter() - began)
    print(markdown)
    write(args.out, "big-model", markdown, {"schema": "graphopt.bench-big-model/1", "machine": info,
                                            "command": command, "model_bytes": size, "shapes": vars(shapes),
                                            "rows": rows})


if __name__ == "__main__":
    main()
