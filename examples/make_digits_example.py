"""Regenerate graphopt's bundled example: a small, structurally sparse digits CNN.

Why: graphopt's passes (notably lossless zero-weight elimination) need a model
that is real - trained on real data, with real accuracy to preserve - yet small
enough to ship in the repository and to verify in seconds.  This script trains
one on scikit-learn's 8x8 digits (shipped inside the package, no download) with
a group-lasso penalty, so that whole conv output channels and hidden units end
up EXACTLY zero (weights and bias), then writes the model with onnx.helper and
checks it against torch with onnxruntime.

Writes, next to this file:
  digits_cnn.onnx     input `image` float32 [N,1,8,8] -> output `logits` [N,10]
  digits.npz          held-out samples, key `image` (float32 [S,1,8,8])
  digits_labels.npy   their true labels (int64 [S])

Run (deterministic, byte-identical output; ~20 s on 2 CPU cores):
  pip install scikit-learn torch==2.13.0   # CPU build; onnx, onnxruntime, numpy too
  python examples/make_digits_example.py
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
N_TRAIN = 1000
# Group-lasso strength per layer (each group: one output channel/unit's incoming
# weights plus its bias), scaled by sqrt(group size) as usual for group lasso.
LAMBDAS = {"conv1": 1.5e-3, "conv2": 8e-4, "fc1": 4e-4}
SPARSE_EPOCHS, FINETUNE_EPOCHS, BATCH = 120, 60, 50
SPARSE_LR, MOMENTUM, FINETUNE_LR = 0.05, 0.9, 1e-3


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0,1] as float32 [N,1,8,8]; a seeded train/held-out split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(y))
    train, test = perm[:N_TRAIN], np.sort(perm[N_TRAIN:])
    return x[train], y[train], x[test], y[test]


class DigitsCNN(nn.Module):
    """Conv-Relu-Conv-Relu-MaxPool-Flatten-Gemm-Relu-Gemm, exactly the ONNX graph below."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = torch.flatten(nn.functional.max_pool2d(x, 2, 2), 1)
        return self.fc2(torch.relu(self.fc1(x)))

    def sparse_layers(self) -> dict[str, nn.Module]:
        return {"conv1": self.conv1, "conv2": self.conv2, "fc1": self.fc1}


def group_norms(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each output group: that row's incoming weights and its bias."""
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    return torch.sqrt((w**2).sum(1) + layer.bias**2)


@torch.no_grad()
def prox_group_lasso(model: DigitsCNN, lr: float) -> None:
    """Group soft-thresholding; groups below the threshold become exactly 0.0."""
    for name, layer in model.sparse_layers().items():
        size = layer.weight[0].numel() + 1
        thresh = lr * LAMBDAS[name] * size**0.5
        norms = group_norms(layer)
        scale = torch.clamp(1.0 - thresh / torch.clamp(norms, min=1e-12), min=0.0)
        keep = scale > 0
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.copy_(torch.where(keep.reshape(shape), layer.weight * scale.reshape(shape), 0.0))
        layer.bias.copy_(torch.where(keep, layer.bias * scale, 0.0))


@torch.no_grad()
def apply_masks(model: DigitsCNN, masks: dict[str, torch.Tensor]) -> None:
    """Pin the groups whose mask is False at exactly 0.0 (weights and bias)."""
    for name, layer in model.sparse_layers().items():
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.copy_(torch.where(masks[name].reshape(shape), layer.weight, 0.0))
        layer.bias.copy_(torch.where(masks[name], layer.bias, 0.0))


def train(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
          masks: dict[str, torch.Tensor] | None) -> None:
    """Cross-entropy training.  Without masks: proximal SGD for the group lasso
    (a plain gradient step, then group soft-thresholding, so a group stays at zero
    unless its gradient is strong enough).  With masks: Adam fine-tuning with the
    zero groups pinned at 0.0."""
    opt: torch.optim.Optimizer
    if masks is None:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if masks is None:
                prox_group_lasso(model, lr)
            else:
                apply_masks(model, masks)


def zero_groups(model: DigitsCNN) -> dict[str, torch.Tensor]:
    """Per layer, a bool mask of the groups that are exactly zero (weights and bias)."""
    return {name: group_norms(layer).detach() == 0.0 for name, layer in model.sparse_layers().items()}


def build_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """The trained weights as a plain ONNX graph (opset 17, ir_version 8)."""
    inits = [numpy_helper.from_array(p.detach().numpy().astype(np.float32), name)
             for name, p in model.state_dict().items()]
    node = helper.make_node
    nodes = [
        node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1_out"], "conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["conv1_out"], ["relu1_out"], "relu1"),
        node("Conv", ["relu1_out", "conv2.weight", "conv2.bias"], ["conv2_out"], "conv2", pads=[1, 1, 1, 1]),
        node("Relu", ["conv2_out"], ["relu2_out"], "relu2"),
        node("MaxPool", ["relu2_out"], ["pool_out"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["pool_out"], ["flat"], "flatten", axis=1),
        node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], "fc1", transB=1),
        node("Relu", ["fc1_out"], ["relu3_out"], "relu3"),
        node("Gemm", ["relu3_out", "fc2.weight", "fc2.bias"], ["logits"], "fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                          producer_name="graphopt examples", producer_version="1")
    m.doc_string = ("Digits CNN (sklearn 8x8 digits) trained with group lasso: some conv "
                    "channels and hidden units are exactly zero. See make_digits_example.py.")
    onnx.checker.check_model(m, full_check=True)
    return m


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but with fixed zip timestamps so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)


def main() -> None:
    """Train, sparsify, fine-tune, export, cross-check with onnxruntime, write files."""
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    x_tr, y_tr, x_te, y_te = load_data()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model = DigitsCNN()
    train(model, xt, yt, SPARSE_EPOCHS, SPARSE_LR, masks=None)
    masks = {name: ~zero for name, zero in zero_groups(model).items()}
    train(model, xt, yt, FINETUNE_EPOCHS, FINETUNE_LR, masks=masks)

    model.eval()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    acc = float((torch_logits.argmax(1) == y_te).mean())
    zeros = zero_groups(model)
    assert all(bool((zeros[n] == ~masks[n]).all()) for n in zeros), "masked groups drifted"

    onnx_model = build_onnx(model)
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"image": x_te})
    diff = float(np.abs(ort_logits - torch_logits).max())
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    assert diff < 1e-4, f"onnxruntime and torch disagree: max abs diff {diff}"
    assert ort_acc == acc, f"accuracy differs: onnxruntime {ort_acc} vs torch {acc}"

    onnx.save(onnx_model, OUT_DIR / "digits_cnn.onnx")
    save_npz(OUT_DIR / "digits.npz", image=x_te)
    np.save(OUT_DIR / "digits_labels.npy", y_te)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {len(y_tr)}, held out {len(y_te)}; parameters {n_params}")
    print(f"held-out accuracy: torch {acc:.4f}, onnxruntime {ort_acc:.4f} (max |diff| {diff:.2e})")
    for name, zero in zeros.items():
        print(f"exactly-zero groups in {name}: {int(zero.sum())}/{zero.numel()}")


if __name__ == "__main__":
    main()
