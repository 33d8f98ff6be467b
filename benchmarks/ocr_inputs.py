"""Real inputs for the OCR workloads (``workloads.py``: ``ddddocr``, ``ppocr_rec``, ``ppocr_det``), made
deterministically from images and fonts that PyPI packages ship, and preprocessed exactly as the packages do.

Sources (nothing is downloaded):

- CAPTCHAs from the ``captcha`` package (``ImageCaptcha``, its bundled DroidSansMono font, 160×60), the input
  ddddocr is made for; ``captcha`` draws from ``secrets``, so a seeded ``random.Random`` stands in for it here.
- ``skimage.data.page()``: a real photo of a printed book page. Its seven text lines are the boxes RapidOCR's own
  detector (PP-OCRv4 det, default config with ``box_thresh=0.3``) finds on it, cut out as RapidOCR cuts them
  (``get_rotate_crop_image``).
- Real photos without text: scikit-learn's ``load_sample_images()`` (china, flower) and twelve ``skimage.data``
  photos (``_NO_TEXT_PHOTOS``; not ``astronaut``, whose badges carry text).
- Text rendered with the fonts packages ship (captcha's DroidSansMono, Pillow's built-in Aileron) from real English
  prose: the dataset descriptions scikit-learn ships (``sklearn/datasets/descr/*.rst``).

Preprocessing (read from the packages' source; ``check_ocr_inputs.py`` checks it against them):

- ddddocr (``OCREngine._preprocess_image``): PIL resize to height 64 keeping the aspect (width
  ``int(w * 64 / h)``, LANCZOS), then grey (``convert("L")``), ``/ 255``, shape [1, 1, 64, W].
- PP-OCR rec (rapidocr ``TextRecognizer.resize_norm_img``, ``rec_img_shape`` [3, 48, 320]): BGR, cv2 resize to
  height 48 and width ``ceil(48 * w / h)`` (at most 320), ``/ 255``, ``(x - 0.5) / 0.5``, zero-padded on the right
  to 320. Every crop here has ``w / h <= 320 / 48``, so a crop alone or in any batch of them gets this shape.
- PP-OCR det (rapidocr ``TextDetector``: ``get_preprocess`` then ``DetPreProcess``): BGR, resized so the longer
  side is at most the limit, both sides rounded to multiples of 32, ``(x / 255 - 0.5) / 0.5``, CHW. RapidOCR's
  default (``det_limit_type="min"``, 736) upscales every image to a shorter side of 736; with
  ``det_limit_type="max"`` (a RapidOCR option) ``get_preprocess`` takes the limit 960 for images under 960 px, so
  the 320×320 images made here go in at 320×320: a fifth of the compute and memory of 736×736.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random
import re
import string
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "CAPTCHA_SIZE",
    "DET_SIDE",
    "PAGE_LINES",
    "REC_SHAPE",
    "captcha_samples",
    "ddddocr_input",
    "det_images",
    "det_input",
    "missing",
    "page_line_crops",
    "rec_crops",
    "rec_input",
]

CAPTCHA_SIZE = (160, 60)
REC_SHAPE = (3, 48, 320)
DET_SIDE = 320
_CAPTCHA_CHARS = string.digits + string.ascii_lowercase

PAGE_LINES = (
    ((7, 12), (292, 14), (292, 33), (7, 32)),
    ((4, 47), (379, 48), (378, 66), (4, 65)),
    ((3, 63), (379, 64), (379, 86), (3, 85)),
    ((3, 81), (378, 83), (378, 104), (3, 102)),
    ((2, 96), (381, 98), (381, 123), (2, 121)),
    ((5, 114), (172, 123), (171, 140), (4, 132)),
    ((17, 166), (242, 177), (242, 190), (16, 183)),
)
"""The text lines of ``skimage.data.page()`` as RapidOCR 1.4.4's detector boxes them (``RapidOCR()(page,
box_thresh=0.3)``; the default 0.5 keeps five of them): "Region-based segmentation", "Let us first determine
markers of the coins and the", …, ">>> markers = np.zeros_like(coins)"."""

_NO_TEXT_PHOTOS = ("camera", "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry",
                   "brick", "grass", "gravel", "moon", "coins", "retina", "cell")


def missing() -> str | None:
    """The first package these inputs need that is not installed, as an install hint; ``None`` when all are."""
    for module, package in (("PIL", "pillow"), ("cv2", "opencv-python-headless"), ("captcha", "captcha==0.7.1"),
                            ("skimage", "scikit-image==0.26.0"), ("sklearn", "scikit-learn==1.9.1")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (it ships the inputs): pip install {package}"
    return None


# ---------------------------------------------------------------------------------------------------- ddddocr


@contextlib.contextmanager
def _seeded_captcha(rng: random.Random) -> Iterator[None]:
    """``captcha.image`` draws from ``secrets``; swap in a seeded generator with the same three functions."""
    from captcha import image

    saved = image.secrets
    image.secrets = types.SimpleNamespace(  # type: ignore[assignment]
        randbelow=rng.randrange, choice=rng.choice, randbits=rng.getrandbits)
    try:
        yield
    finally:
        image.secrets = saved


def captcha_samples(n: int, seed: int = 0) -> tuple[list[str], list[object]]:
    """``n`` CAPTCHAs (4 or 5 lower-case letters and digits, the captcha package's default style), as their texts and
    RGB PIL images."""
    from captcha.image import ImageCaptcha

    rng = random.Random(seed)
    generator = ImageCaptcha(width=CAPTCHA_SIZE[0], height=CAPTCHA_SIZE[1])
    texts, images = [], []
    with _seeded_captcha(rng):
        for _ in range(n):
            text = "".join(rng.choice(_CAPTCHA_CHARS) for _ in range(rng.choice((4, 5))))
            texts.append(text)
            images.append(generator.generate_image(text))
    return texts, images


def ddddocr_input(image: object) -> np.ndarray:
    """ddddocr's preprocessing of a PIL image for its default-size models: [1, 1, 64, W] float32 in [0, 1]."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    width = int(image.size[0] * (64 / image.size[1]))
    grey = image.resize((width, 64), Image.LANCZOS).convert("L")
    return (np.array(grey).astype(np.float32) / 255.0)[None, None]


# --------------------------------------------------------------------------------------------- shared sources


def _sentences() -> list[str]:
    """Real English prose: the dataset descriptions scikit-learn ships, as words in reading order, cut into
    sentences (reST markup, tables and URLs dropped)."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "datasets" / "descr"
    words: list[str] = []
    for path in sorted(folder.glob("*.rst")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line[0] in ":.=-*|+`" or "http" in line or "  " in line:
                continue
            words += [w for w in re.sub(r"[`*_|\\]", "", line).split() if w.isprintable()]
    text = " ".join(words)
    return [s.strip() for s in re.split(r"(?<=[.;:])\s+", text) if len(s.split()) >= 3]


def _fonts(sizes: range) -> list[object]:
    """TrueType fonts that packages ship: captcha's DroidSansMono and Pillow's built-in (Aileron), at ``sizes``."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("captcha")
    assert spec is not None and spec.origin is not None
    droid = str(Path(spec.origin).parent / "data" / "DroidSansMono.ttf")
    return [font for size in sizes for font in (ImageFont.truetype(droid, size), ImageFont.load_default(size))]


def _photos() -> dict[str, np.ndarray]:
    """Real photos without text, RGB uint8: scikit-learn's two sample images and skimage's bundled photos."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    found = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    for name in _NO_TEXT_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        found[name] = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return found


def _page_rgb() -> np.ndarray:
    import skimage.data

    page = np.asarray(skimage.data.page())
    return np.repeat(page[..., None], 3, axis=2)


def _rotate_crop(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """RapidOCR's ``get_rotate_crop_image``: the quadrilateral ``points`` warped to an upright rectangle."""
    import cv2

    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(points.astype(np.float32), target)
    crop = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if crop.shape[0] / crop.shape[1] >= 1.5 else crop


# ---------------------------------------------------------------------------------------------- PP-OCR rec


def page_line_crops() -> list[np.ndarray]:
    """The seven text lines of ``skimage.data.page()``, BGR, cut as RapidOCR cuts detected boxes."""
    page = _page_rgb()[..., ::-1].copy()
    return [_rotate_crop(page, np.array(box, np.float32)) for box in PAGE_LINES]


def _word_spans(line: np.ndarray) -> list[tuple[int, int]]:
    """Column ranges of the words of a text-line crop: ink columns (darker than the line's median by a margin)
    split where more than 5 columns without ink separate them (the page's lines are 17 to 25 px high: letters
    stand at most 5 px apart, words 6 or more)."""
    grey = line.mean(axis=2)
    ink = (grey < np.median(grey) - 40).sum(axis=0) > 0
    columns = np.flatnonzero(ink)
    if columns.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(columns) > 5)
    starts = [columns[0], *columns[breaks + 1]]
    stops = [*columns[breaks], columns[-1]]
    return [(int(a), int(b) + 1) for a, b in zip(starts, stops, strict=True)]


def _page_word_crops(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` crops of consecutive words of the page's real text lines, each no wider than 320/48 of its height,
    with seeded margins, contrast and blur."""
    import cv2

    lines = page_line_crops()
    spans = [_word_spans(line) for line in lines]
    crops: list[np.ndarray] = []
    while len(crops) < n:
        i = int(rng.integers(len(lines)))
        line, words = lines[i], spans[i]
        if not words:
            continue
        height = line.shape[0]
        first = int(rng.integers(len(words)))
        last = first
        while last + 1 < len(words) and (words[last + 1][1] - words[first][0] + 6) / height <= 6.4:
            last += 1
        left = max(0, words[first][0] - int(rng.integers(1, 6)))
        right = min(line.shape[1], words[last][1] + int(rng.integers(1, 6)))
        if (right - left) / height > 6.6:  # one word wider than the budget: cut it
            right = left + int(6.6 * height)
        crop = line[:, left:right].astype(np.float32)
        crop = (crop - crop.mean()) * rng.uniform(0.7, 1.3) + crop.mean() + rng.uniform(-25, 25)
        if rng.random() < 0.3:
            crop = cv2.GaussianBlur(crop, (3, 3), 0)
        crops.append(np.clip(crop, 0, 255).astype(np.uint8))
    return crops


def _background(photos: dict[str, np.ndarray], rng: np.random.Generator, width: int, height: int,
                light: bool) -> np.ndarray:
    """An RGB background: a flat tone or a real photo crop washed towards white (``light``) or black."""
    import cv2

    tone = rng.uniform(200, 255) if light else rng.uniform(0, 60)
    flat = np.full((height, width, 3), tone, np.float32) + rng.uniform(-12, 12, size=3)
    if rng.random() < 0.5:
        return np.clip(flat, 0, 255)
    photo = photos[sorted(photos)[int(rng.integers(len(photos)))]]
    scale = max(width / photo.shape[1], height / photo.shape[0], rng.uniform(0.3, 1.0))
    photo = cv2.resize(photo, (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale))))
    y, x = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
    wash = rng.uniform(0.55, 0.8)
    return photo[y:y + height, x:x + width].astype(np.float32) * (1 - wash) + flat * wash


def _rendered_line(text: str, font: object, photos: dict[str, np.ndarray], rng: np.random.Generator
                   ) -> np.ndarray | None:
    """``text`` drawn on a background with seeded margins, colours and a slight tilt, cut to at most 320/48 of
    its height; BGR uint8, or ``None`` when not even one character fits."""
    from PIL import Image, ImageDraw

    draw_font = font  # a PIL FreeTypeFont
    box = draw_font.getbbox(text)  # type: ignore[attr-defined]
    text_h = box[3] - box[1]
    pad_y, pad_x = int(rng.integers(2, max(3, text_h // 3))), int(rng.integers(2, 10))
    height = text_h + 2 * pad_y
    limit = int(6.5 * height) - 2 * pad_x
    def too_wide(t: str) -> bool:
        return bool(draw_font.getbbox(t)[2] - box[0] > limit)  # type: ignore[attr-defined]

    while " " in text and too_wide(text):  # whole words first, then characters of a single long word
        text = text.rsplit(" ", 1)[0]
    while text and too_wide(text):
        text = text[:-1]
    if not text:
        return None
    width = draw_font.getbbox(text)[2] - box[0] + 2 * pad_x  # type: ignore[attr-defined]
    light = rng.random() < 0.8
    background = _background(photos, rng, width, height, light)
    ink = tuple(int(v) for v in (rng.uniform(0, 90, size=3) if light else rng.uniform(190, 255, size=3)))
    canvas = Image.fromarray(background.astype(np.uint8))
    ImageDraw.Draw(canvas).text((pad_x - box[0], pad_y - box[1]), text, font=draw_font, fill=ink)
    if rng.random() < 0.4:
        fill = tuple(int(v) for v in background[0, 0])
        canvas = canvas.rotate(float(rng.uniform(-2.0, 2.0)), resample=Image.BICUBIC, fillcolor=fill)
    return np.asarray(canvas)[..., ::-1].copy()


def rec_crops(n: int, seed: int = 0, real_share: float = 1 / 3) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` BGR text crops for PP-OCR rec: a ``real_share`` of word groups cut from the page photo's real text
    lines, the rest real English prose rendered with packaged fonts on flat or photo backgrounds. Returns the
    crops and a boolean array, true for the crops from the photo."""
    rng = np.random.default_rng(seed)
    n_real = round(n * real_share)
    crops = _page_word_crops(n_real, rng)
    sentences, fonts, photos = _sentences(), _fonts(range(22, 46, 4)), _photos()
    while len(crops) < n:
        words = sentences[int(rng.integers(len(sentences)))].split()
        start = int(rng.integers(len(words)))
        text = " ".join(words[start:start + int(rng.integers(1, 5))])
        crop = _rendered_line(text, fonts[int(rng.integers(len(fonts)))], photos, rng)
        if crop is not None:
            crops.append(crop)
    return crops, np.arange(n) < n_real


def rec_input(crop: np.ndarray) -> np.ndarray:
    """rapidocr's ``TextRecognizer.resize_norm_img`` for a crop alone (``max_wh_ratio`` = 320/48): [3, 48, 320]."""
    import cv2

    channels, height, width = REC_SHAPE
    ratio = crop.shape[1] / float(crop.shape[0])
    resized_w = min(width, math.ceil(height * ratio))
    resized = cv2.resize(crop, (resized_w, height)).astype("float32").transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((channels, height, width), np.float32)
    padded[:, :, :resized_w] = resized
    return padded


# ---------------------------------------------------------------------------------------------- PP-OCR det


def _square(image: np.ndarray, rng: np.random.Generator, low: int, mirror: bool) -> np.ndarray:
    """A seeded square crop of ``image`` (side at least ``low`` or the image's shorter side), mirrored at random
    when ``mirror``."""
    short = min(image.shape[:2])
    side = int(rng.integers(min(low, short), short + 1))
    y, x = int(rng.integers(image.shape[0] - side + 1)), int(rng.integers(image.shape[1] - side + 1))
    crop = image[y:y + side, x:x + side]
    return crop[:, ::-1] if mirror and rng.random() < 0.5 else crop


def _text_scene(photos: dict[str, np.ndarray], sentences: list[str], fonts: list[object],
                rng: np.random.Generator) -> np.ndarray:
    """A 480×480 RGB image with 2 to 6 lines of real prose drawn on a flat or photo background."""
    from PIL import Image, ImageDraw

    side = 480
    light = rng.random() < 0.7
    canvas = Image.fromarray(_background(photos, rng, side, side, light).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    y = int(rng.integers(10, 80))
    for _ in range(int(rng.integers(2, 7))):
        font = fonts[int(rng.integers(len(fonts)))]
        words = sentences[int(rng.integers(len(sentences)))].split()
        text = " ".join(words[:int(rng.integers(2, 8))])
        box = font.getbbox(text)  # type: ignore[attr-defined]
        if y + box[3] > side - 10:
            break
        x = int(rng.integers(5, max(6, side - min(box[2], side - 10))))
        ink = tuple(int(v) for v in (rng.uniform(0, 80, size=3) if light else rng.uniform(200, 255, size=3)))
        draw.text((x, y), text, font=font, fill=ink)
        y += box[3] + int(rng.integers(8, 40))
    return np.asarray(canvas)


def det_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """``n`` BGR images of ``DET_SIDE``×``DET_SIDE`` for PP-OCR det, in a seeded order: a sixth square crops of the
    real page photo (96 px or more, upscaled), a third real prose rendered on flat or photo backgrounds (drawn at
    480×480), and half square crops (192 px or more) of real photos without text, each resized to ``DET_SIDE``
    (cv2, area when shrinking, bicubic when enlarging). Returns the images and boolean masks of the three kinds."""
    import cv2

    rng = np.random.default_rng(seed)
    photos, sentences, fonts = _photos(), _sentences(), _fonts(range(20, 50, 6))
    page = _page_rgb()
    n_page, n_scene = n // 6, n // 3
    images, kinds = [], []
    for i in range(n):
        if i < n_page:
            image = _square(page, rng, 96, mirror=False)
            kinds.append("page photo")
        elif i < n_page + n_scene:
            image = _text_scene(photos, sentences, fonts, rng)
            kinds.append("rendered text")
        else:
            image = _square(photos[sorted(photos)[int(rng.integers(len(photos)))]], rng, 192, mirror=True)
            kinds.append("photo without text")
        shrink = image.shape[0] > DET_SIDE
        image = cv2.resize(image, (DET_SIDE, DET_SIDE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        images.append(np.ascontiguousarray(image[..., ::-1]))
    order = rng.permutation(n)
    labels = np.array(kinds)[order]
    return [images[i] for i in order], {k: labels == k for k in ("page photo", "rendered text",
                                                                  "photo without text")}


def det_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's ``TextDetector`` preprocessing with ``det_limit_type="max"`` (``get_preprocess`` picks the limit
    from the longer side, ``DetPreProcess`` resizes and normalises): [3, H, W] float32, sides multiples of 32."""
    import cv2

    h, w = image.shape[:2]
    longest = max(h, w)
    limit = 960 if longest < 960 else 1500 if longest < 1500 else 2000
    ratio = (float(limit) / h if h > w else float(limit) / w) if longest > limit else 1.0
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    resized = cv2.resize(image, (resize_w, resize_h))
    normalized = (resized.astype("float32") * (1 / 255.0) - np.array([0.5, 0.5, 0.5])) / np.array([0.5, 0.5, 0.5])
    return normalized.transpose((2, 0, 1)).astype(np.float32)


DDDDOCR_DET_SIDE = 416


def ddddocr_det_input(image: np.ndarray) -> np.ndarray:
    """ddddocr's detector preprocessing (``DetectionEngine.preproc``) of a BGR image: resized by the ratio that fits
    its longer side into 416 (cv2, linear), padded with 114 to 416×416, [3, 416, 416] float32 in 0–255."""
    import cv2

    side = DDDDOCR_DET_SIDE
    padded = np.full((side, side, 3), 114, np.uint8)
    ratio = min(side / image.shape[0], side / image.shape[1])
    height, width = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    padded[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)
