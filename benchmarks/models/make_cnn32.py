"""Build cnn32: a CNN trained here on scikit-learn's digits upsampled to 32×32, big enough that convolutions dominate.

The bundled ``examples/digits_cnn.onnx`` runs in tens of microseconds, so its latency is mostly onnxruntime overhead;
this model spends ~30 M multiply-adds per image in four 3×3 convolutions of 32–64 channels, where int8 kernels can
show (or fail to show) a speed-up. Real data, real accuracy: the 8×8 digits ship inside scikit-learn (no download),
are scaled to [0, 1] and upsampled 4× (bilinear), and split as the bundled example does (seed 0, the first 1000 of a
permutation train, the other 797 are held out), so the held-out images are the same digits as ``examples/digits.npz``.

Writes into ``--out`` (default ``~/.cache/graphopt-bench/cnn32``; the files are ~3.6 MB, too big to commit):

    cnn32.onnx          input ``image`` float32 [N,1,32,32] → output ``logits`` [N,10]; opset 17
    cnn32.npz           held-out images, key ``image`` (float32 [797,1,32,32])
    cnn32_labels.npy    their labels (int64 [797])
    cnn32.stamp.json    hash of this script and the torch version; a matching stamp makes a rerun a no-op

Run (deterministic; ~4–5 min on 2 cores; needs torch==2.13.0 and scikit-learn):

    python benchmarks/models/make_cnn32.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_OUT", "build", "is_current"]

DEFAULT_OUT = Path.home() / ".cache" / "graphopt-bench" / "cnn32"
SEED = 0
N_TRAIN = 1000
EPOCHS, BATCH, LR = 15, 50, 1e-3
FILES = ("cnn32.onnx", "cnn32.npz", "cnn32_labels.npy")


def _stamp() -> dict[str, Any]:
    return {"script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), "torch": version("torch")}


def is_current(out: Path) -> bool:
    """Whether ``out`` holds every file, written by this exact script under the installed torch."""
    try:
        stamp = json.loads((out / "cnn32.stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp() and all((out / name).is_file() for name in FILES)


def _digits32() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out images (float32 [n,1,32,32] in [0,1]) and labels, split as examples/make_digits_example."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x8 = torch.from_numpy((digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    x = torch.nn.functional.interpolate(x8, scale_factor=4, mode="bilinear", align_corners=False).numpy()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    train, held_out = order[:N_TRAIN], np.sort(order[N_TRAIN:])
    return x[train], y[train], x[held_out], y[held_out]


def _network() -> Any:
    import torch
    from torch import nn

    class Cnn32(nn.Module):
        """conv 1→32 @32², conv 32→64 @32², pool, conv 64→64 @16², pool, conv 64→64 @8², pool, linear 1024→10."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc = nn.Linear(64 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            x = torch.relu(self.conv3(nn.functional.max_pool2d(x, 2)))
            x = torch.relu(self.conv4(nn.functional.max_pool2d(x, 2)))
            return self.fc(torch.flatten(nn.functional.max_pool2d(x, 2), 1))

    return Cnn32()


def _train(x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model = _network()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(yt), generator=gen).split(BATCH):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        schedule.step()
    return model.eval()


def _export(model: Any, path: Path, sample: np.ndarray) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(sample),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)


def build(out: Path = DEFAULT_OUT, *, force: bool = False) -> Path:
    """Train, export and check the model, and write it with its held-out data into ``out``; returns ``out``."""
    if not force and is_current(out):
        return out
    import onnx
    import onnxruntime as ort
    import torch

    x_train, y_train, x_test, y_test = _digits32()
    model = _train(x_train, y_train)
    with torch.no_grad():
        want = model(torch.from_numpy(x_test)).numpy()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:
        staged = Path(staging)
        _export(model, staged / "cnn32.onnx", x_test[:2])
        onnx.checker.check_model(str(staged / "cnn32.onnx"), full_check=True)
        session = ort.InferenceSession(str(staged / "cnn32.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"image": x_test})
        error = float(np.abs(got - want).max())
        if error > 1e-4:
            raise RuntimeError(f"onnxruntime and torch disagree by {error:.3g}")
        np.savez(staged / "cnn32.npz", image=x_test)
        np.save(staged / "cnn32_labels.npy", y_test)
        for name in FILES:
            os.replace(staged / name, out / name)
    (out / "cnn32.stamp.json").write_text(json.dumps(_stamp(), indent=1))
    accuracy = float(np.mean(got.argmax(1) == y_test))
    params = sum(p.numel() for p in model.parameters())
    print(f"cnn32: {params} params, trained on {len(y_train)}, held-out accuracy {accuracy:.4f} on {len(y_test)}; "
          f"onnxruntime vs torch max|Δ| {error:.2e}; wrote {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the model and held-out data")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args()
    build(args.out, force=args.force)


if __name__ == "__main__":
    main()
