"""Check that the OCR workloads' inputs are preprocessed exactly as the packages do (``ocr_inputs.py``).

Usage:
    python benchmarks/check_ocr_inputs.py [--samples 60]

On the first ``--samples`` inputs of each workload (same seeds as ``workloads.py``):

- ddddocr: ``ocr_inputs.ddddocr_input`` equals ddddocr's own ``OCREngine._preprocess_image`` bit for bit, and the
  text decoded from ``common.onnx`` run on it (ddddocr's CTC rule and charset) equals
  ``DdddOcr(beta=True).classification(image)``; also prints the exact-match accuracy against the CAPTCHA texts.
- PP-OCR rec: ``ocr_inputs.rec_input`` equals rapidocr's ``TextRecognizer.resize_norm_img`` bit for bit, and the
  text decoded from the model run on it equals rapidocr's ``TextRecognizer`` on the same crops (its own batching).
- PP-OCR det: ``ocr_inputs.det_input`` equals rapidocr's ``TextDetector`` preprocessing (``det_limit_type="max"``)
  bit for bit, and the boxes rapidocr's
  ``DBPostProcess`` finds in the model's map on it equal ``TextDetector``'s on the same image; also prints how many
  maps are empty (no pixel > 0.3) per kind of image.

Exits 1 when any check fails. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import numpy as np
import ocr_inputs as oi
import onnxruntime as ort
from workloads import MAP_THRESHOLD, Unavailable, _package_file

__all__ = ["main"]


def _session(path: object) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ctc(indices: np.ndarray) -> list[int]:
    """CTC collapse: repeats merged, blank (0) dropped."""
    kept = [int(k) for i, k in enumerate(indices) if k != 0 and (i == 0 or k != indices[i - 1])]
    return kept


def check_ddddocr(n: int) -> bool:
    import ddddocr
    from ddddocr.charsets import CHARSET_BETA

    session = _session(_package_file("ddddocr", "ddddocr==1.6.1", "common.onnx"))
    with contextlib.redirect_stdout(io.StringIO()):
        ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    engine = ocr.ocr_engine
    assert engine is not None
    texts, images = oi.captcha_samples(n, seed=0)
    same_tensor = same_text = correct = 0
    for text, image in zip(texts, images, strict=True):
        ours = oi.ddddocr_input(image)
        same_tensor += bool(np.array_equal(ours, engine._preprocess_image(image, False)))
        logits = session.run(None, {"input1": ours})[0]  # [positions, 1, classes]
        decoded = "".join(CHARSET_BETA[k] for k in _ctc(np.argmax(logits[:, 0, :], axis=-1)))
        package = ocr.classification(image)
        same_text += decoded == package
        correct += package.lower() == text
    print(f"ddddocr: tensor identical {same_tensor}/{n}, decoded text = classification() {same_text}/{n}; "
          f"exact-match accuracy vs the CAPTCHA text {correct}/{n} = {correct / n:.3f}; input {ours.shape}, "
          f"output {logits.shape}")
    return same_tensor == same_text == n


def check_ppocr_rec(n: int) -> bool:
    from rapidocr_onnxruntime import RapidOCR

    session = _session(_package_file("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models",
                                     "ch_PP-OCRv4_rec_infer.onnx"))
    recogniser = RapidOCR().text_rec
    crops, real = oi.rec_crops(300, seed=0)
    picked = [int(i) for i in np.linspace(0, len(crops) - 1, n).round()]  # both kinds of crop
    chosen = [crops[i] for i in picked]
    ratio = oi.REC_SHAPE[2] / oi.REC_SHAPE[1]
    ours = np.stack([oi.rec_input(c) for c in chosen])
    same_tensor = sum(bool(np.array_equal(o, recogniser.resize_norm_img(c, ratio))) for o, c in zip(ours, chosen,
                                                                                                    strict=True))
    probs = session.run(None, {"x": ours})[0]
    decoded = [t for t, _ in recogniser.postprocess_op(probs)]
    package = [t for t, _ in recogniser(chosen)[0]]
    same_text = sum(a == b for a, b in zip(decoded, package, strict=True))
    print(f"PP-OCR rec: tensor identical {same_tensor}/{n}, decoded text = TextRecognizer {same_text}/{n} "
          f"({int(real[picked].sum())} page-photo crops); e.g. {decoded[:4]}; input {ours.shape[1:]}, output "
          f"{probs.shape[1:]}")
    return same_tensor == same_text == n


def check_ppocr_det(n: int) -> bool:
    from rapidocr_onnxruntime import RapidOCR

    session = _session(_package_file("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models",
                                     "ch_PP-OCRv4_det_infer.onnx"))
    detector = RapidOCR(det_limit_type="max").text_det
    images, groups = oi.det_images(300, seed=0)
    same_tensor = same_boxes = 0
    empty = {k: [0, 0] for k in groups}
    for i, image in enumerate(images[:n]):
        ours = oi.det_input(image)[None]
        h, w = image.shape[:2]
        same_tensor += bool(np.array_equal(ours, detector.get_preprocess(max(h, w))(image)))
        prob = session.run(None, {"x": ours})[0]
        boxes, _ = detector.postprocess_op(prob, (h, w))
        boxes = detector.filter_tag_det_res(boxes, (h, w))
        package, _ = detector(image)
        same_boxes += bool(np.array_equal(np.asarray(boxes), np.asarray(package)))
        kind = next(k for k, mask in groups.items() if mask[i])
        empty[kind][0] += bool(prob.max() <= MAP_THRESHOLD)
        empty[kind][1] += 1
    print(f"PP-OCR det: tensor identical {same_tensor}/{n}, boxes = TextDetector {same_boxes}/{n}; empty maps "
          "(no pixel > 0.3): " + ", ".join(f"{k} {e}/{t}" for k, (e, t) in empty.items()))
    return same_tensor == same_boxes == n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60, help="inputs checked per workload")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    reason = oi.missing()
    if reason:
        print(reason)
        return 1
    ok = True
    for check in (check_ddddocr, check_ppocr_rec, check_ppocr_det):
        try:
            ok = check(args.samples) and ok
        except Unavailable as e:
            print(f"{check.__name__}: skipped: {e}")
            ok = False
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
