"""Image decoding and the reference training / evaluation transforms (PIL + numpy, NHWC).

The training transform follows the reference (SPEC.md section 3; torchvision on PIL images), in
this order:

1. decode the encoded image (PIL) and convert it to RGB;
2. resize straight to ``size x size`` with PIL bilinear (aspect not kept), like torchvision's
   ``Resize([size, size])`` on a PIL image;
3. horizontal flip with probability ``flip_prob`` (``RandomHorizontalFlip``);
4. zero padding of ``pad`` pixels on all four sides, then a random ``size x size`` crop
   (``Pad`` + ``RandomCrop``); top-left offsets are uniform in ``[0, 2 * pad]``;
5. scale to [0, 1] and normalise, ``(x / 255 - mean) / std`` in float32 (``ToTensor`` +
   ``Normalize``); the zero padding therefore becomes ``-mean / std``;
6. random erasing with torchvision's algorithm (``RandomErasing(p, scale, ratio, value)``) *after*
   normalisation, so erased pixels hold ``erase_value`` (0) in normalised space.

Steps 3-5 run as one shifted copy through a per-channel lookup table (bitwise equal to the
float32 arithmetic of step 5, written directly in the output dtype). The random decisions of one
image are drawn by :meth:`TrainAugment.sample_params` from a ``np.random.Generator`` (grain's
``random_map`` rng) in a fixed order: flip, crop offsets, erasing.

JPEG draft mode (``jpeg_draft``): PIL can decode a JPEG directly at 1/2, 1/4 or 1/8 scale
(``Image.draft``), choosing the smallest scale that keeps both sides >= ``size``. It only changes
anything when the source is at least twice the target on both sides (for 800x600 sources it does
nothing at 384 and 512). Measured on synthetic 1024x768 and 1600x1200 JPEGs it made decode +
resize 1.6-1.9x faster where it applied and changed the resized pixels by 0.5-1.3 grey levels on
average (max 41 of 255) against a full decode; see docs/benchmarks.md. It is on by default for training (where the
augmentation noise is far larger) and off by default for evaluation (reference pixels).
"""

from __future__ import annotations

import dataclasses
import io
import math

import ml_collections
import ml_dtypes
import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
REFERENCE_STD: tuple[float, float, float] = (0.2235, 0.2235, 0.2235)
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


class ImageDecodeError(ValueError):
    """An encoded image could not be decoded; names the list row it belongs to."""

    def __init__(self, row: int, reason: str):
        super().__init__(row, reason)
        self.row = row
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode the image of list row {self.row}: {self.reason}"


def default_pad(size: int) -> int:
    """Padding of the pad + random-crop step: round(size / 25.6) px (256: 10, 384: 15, 512: 20).

    The rule reproduces the reference values at 256/384/512 and interpolates in between
    (448: 18, Python rounding).
    """
    return int(round(size / 25.6))


def default_augment_config(size: int = 384) -> ml_collections.ConfigDict:
    """Training-augmentation settings (reference values); embed in trainer configs.

    Fields: size (output side, px), pad (px, None = :func:`default_pad`), flip_prob, mean and std
    (per channel, on [0, 1] pixels), erase_prob, erase_scale (area fraction range), erase_ratio
    (aspect range h/w), erase_value (normalised space), erase_attempts, jpeg_draft, dtype
    ("float32" or "bfloat16").
    """
    return ml_collections.ConfigDict({
        "size": size,
        "pad": None,
        "flip_prob": 0.5,
        "mean": IMAGENET_MEAN,
        "std": REFERENCE_STD,
        "erase_prob": 1.0,
        "erase_scale": (0.02, 0.2),
        "erase_ratio": (0.3, 3.33),
        "erase_value": 0.0,
        "erase_attempts": 10,
        "jpeg_draft": True,
        "dtype": "float32",
    })


def default_eval_preprocess_config(size: int = 384) -> ml_collections.ConfigDict:
    """Evaluation preprocessing: decode, resize straight to size x size, normalise."""
    return ml_collections.ConfigDict({
        "size": size,
        "mean": IMAGENET_MEAN,
        "std": REFERENCE_STD,
        "jpeg_draft": False,
        "dtype": "float32",
    })


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown output dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def decode_image(data: bytes, *, draft_size: int | None = None, row: int = -1) -> Image.Image:
    """Decodes encoded image bytes to an RGB PIL image.

    Args:
      data: encoded image (JPEG, PNG, ...).
      draft_size: if set and the image is a JPEG, decode at the smallest DCT scale (1/1 .. 1/8)
        that keeps both sides >= draft_size.
      row: list row of the image, only used in the error message.

    Raises:
      ImageDecodeError: the bytes are not a readable image (truncated, corrupt, empty, ...).
    """
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(row, f"{type(e).__name__}: {e}") from None


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Resizes straight to (size, size) with PIL bilinear; returns (size, size, 3) uint8."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def normalization_lut(mean, std, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """(3, 256) table: pixel value v of channel c -> ``(v / 255 - mean[c]) / std[c]``.

    Computed with the float32 operations of torchvision's ToTensor + Normalize (so a lookup is
    bitwise equal to normalising), then cast to ``dtype``.
    """
    x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.astype(dtype).T)


def normalize(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) normalised values of ``lut``'s dtype (one lookup per pixel)."""
    out = np.empty(image.shape, lut.dtype)
    for c in range(3):
        np.take(lut[c], image[..., c], out=out[..., c])
    return out


def flip_pad_crop(image: np.ndarray, *, flip: bool, pad: int, top: int, left: int,
                  lut: np.ndarray | None = None) -> np.ndarray:
    """Optional horizontal flip, zero pad by ``pad`` px, crop back to the input size at (top, left).

    Args:
      image: (H, W, C) uint8 array.
      flip: mirror left-right first.
      pad: zero padding on all four sides (px).
      top, left: crop offsets into the padded (H + 2 pad, W + 2 pad) image, in [0, 2 pad].
      lut: optional (3, 256) :func:`normalization_lut`; when given, the output is normalised
        in the same pass (padding becomes ``lut[:, 0]``, the normalised zero).

    Returns:
      (H, W, C) array: uint8 without ``lut``, ``lut.dtype`` with it.
    """
    h, w = image.shape[:2]
    if not (0 <= top <= 2 * pad and 0 <= left <= 2 * pad):
        raise ValueError(f"crop offsets ({top}, {left}) outside [0, {2 * pad}]")
    if flip:
        image = image[:, ::-1]
    dy, dx = top - pad, left - pad
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    src = image[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
    if lut is None:
        out = np.zeros(image.shape, image.dtype)
        out[y0:y1, x0:x1] = src
        return out
    out = np.empty(image.shape, lut.dtype)
    out[...] = lut[:, 0]
    for c in range(image.shape[2]):
        np.take(lut[c], src[..., c], out=out[y0:y1, x0:x1, c])
    return out


def sample_erase_box(rng: np.random.Generator, height: int, width: int, *,
                     scale: tuple[float, float], ratio: tuple[float, float],
                     attempts: int = 10) -> tuple[int, int, int, int] | None:
    """torchvision's RandomErasing box: (top, left, h, w), or None if no attempt fits.

    Each attempt draws area = U(scale) * H * W and aspect = exp(U(log ratio)), sets
    h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)) and accepts if h < H and
    w < W; the top-left corner is then uniform over the positions that keep the box inside.
    """
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        area = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if h < height and w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The random decisions for one training image."""

    flip: bool
    top: int
    left: int
    erase: tuple[int, int, int, int] | None  # (top, left, h, w) or None


class TrainAugment:
    """The reference training transform as a grain random-map callable.

    ``augment(record, rng)`` takes ``{"image": encoded bytes, "index": row, "label": label}`` and
    returns ``{"image": (size, size, 3) float32|bfloat16, "index": int32, "label": int32}``.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.size = int(config.size)
        self.pad = default_pad(self.size) if config.pad is None else int(config.pad)
        self.flip_prob = float(config.flip_prob)
        self.mean = tuple(float(m) for m in config.mean)
        self.std = tuple(float(s) for s in config.std)
        self.erase_prob = float(config.erase_prob)
        self.erase_scale = tuple(float(s) for s in config.erase_scale)
        self.erase_ratio = tuple(float(r) for r in config.erase_ratio)
        self.erase_value = float(config.erase_value)
        self.erase_attempts = int(config.erase_attempts)
        self.jpeg_draft = bool(config.jpeg_draft)
        self.dtype = _dtype(config.dtype)
        self.lut = normalization_lut(self.mean, self.std, self.dtype)
        if self.size <= 0 or self.pad < 0:
            raise ValueError(f"augment: size must be > 0 and pad >= 0, got {self.size}, {self.pad}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"augment: mean and std need 3 values, got {self.mean}, {self.std}")

    def sample_params(self, rng: np.random.Generator) -> AugmentParams:
        """Draws flip, crop offsets and the erasing box, in that order."""
        flip = bool(rng.random() < self.flip_prob)
        top, left = (int(v) for v in rng.integers(0, 2 * self.pad + 1, size=2))
        erase = None
        if rng.random() < self.erase_prob:
            erase = sample_erase_box(rng, self.size, self.size, scale=self.erase_scale,
                                     ratio=self.erase_ratio, attempts=self.erase_attempts)
        return AugmentParams(flip=flip, top=top, left=left, erase=erase)

    def apply(self, image: np.ndarray, params: AugmentParams) -> np.ndarray:
        """Deterministic part: (size, size, 3) uint8 resized image -> augmented output array."""
        x = flip_pad_crop(image, flip=params.flip, pad=self.pad, top=params.top, left=params.left,
                          lut=self.lut)
        if params.erase is not None:
            top, left, h, w = params.erase
            x[top:top + h, left:left + w] = self.erase_value
        return x

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        row = int(record["index"])
        image = decode_image(record["image"], draft_size=self.size if self.jpeg_draft else None,
                             row=row)
        image = resize(image, self.size)
        return {"image": self.apply(image, self.sample_params(rng)),
                "index": np.int32(row), "label": np.int32(record["label"])}


class EvalPreprocess:
    """Evaluation transform: decode, resize straight to size x size, normalise.

    ``preprocess(record)`` takes ``{"image": bytes, "index": row}`` and returns
    ``{"image": (size, size, 3), "index": int32, "mask": True}``; a padding record
    ``{"image": None, "index": -1}`` gives a zero image with ``mask`` False.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.size = int(config.size)
        self.mean = tuple(float(m) for m in config.mean)
        self.std = tuple(float(s) for s in config.std)
        self.jpeg_draft = bool(config.jpeg_draft)
        self.dtype = _dtype(config.dtype)
        self.lut = normalization_lut(self.mean, self.std, self.dtype)

    def __call__(self, record: dict) -> dict:
        row = int(record["index"])
        if record["image"] is None:
            image = np.zeros((self.size, self.size, 3), self.dtype)
            return {"image": image, "index": np.int32(row), "mask": np.bool_(False)}
        image = decode_image(record["image"], draft_size=self.size if self.jpeg_draft else None,
                             row=row)
        return {"image": normalize(resize(image, self.size), self.lut), "index": np.int32(row),
                "mask": np.bool_(True)}
