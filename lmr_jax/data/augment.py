"""Image decoding and the reference training / evaluation transforms (OpenCV + numpy, NHWC).

Decoding and resizing follow the reference exactly (uint8 arrays equal to its own):

1. decode with OpenCV, ``cv2.imdecode(bytes, cv2.IMREAD_COLOR)``, which is what the reference's
   ``cv2.imread(path)`` does to the file: 3-channel BGR whatever the source (grayscale, CMYK
   JPEG, 16-bit, palette and alpha PNG all become 8-bit BGR; alpha is dropped, not blended),
   with the EXIF orientation tag applied (orientations 2-8 mirror / rotate the pixels, 5-8
   swap height and width). With the pinned OpenCV (4.13) ``imdecode`` of a file's bytes and
   ``imread`` of the file give the same array, EXIF orientations included (tested);
2. resize straight to ``size x size`` with ``cv2.resize(image, (size, size))``: bilinear
   (``INTER_LINEAR``), aspect not kept, no antialiasing filter when shrinking;
3. convert BGR to RGB.

GIF: the pinned OpenCV decodes GIF (the first frame of an animation). OpenCV got its GIF decoder
in 4.11 and builds it by default from 4.12; with older OpenCV (any the reference could have used)
``cv2.imread`` returns None for a GIF and the reference's ``cv2.resize`` then fails, so the
reference never trained on one. lmr-jax decodes GIFs as the pinned OpenCV does rather than
dropping them. Bytes that OpenCV cannot
decode (empty, not an image, truncated JPEG / PNG, unsupported format) raise
:class:`ImageDecodeError` naming the list row, never a substitute image. A header claiming more
than :data:`MAX_DECODE_PIXELS` pixels (a decompression bomb: a 70-byte PNG can announce
100000 x 100000) raises :class:`ImageTooLarge` before any pixel buffer is allocated; OpenCV's
own limit (2**30 pixels) would refuse only the largest, after a 30000 x 30000 claim had made it
allocate 2.7 GB.

The training transform then follows the reference's torchvision pipeline, in this order:

4. horizontal flip with probability ``flip_prob`` (``RandomHorizontalFlip``);
5. zero padding of ``pad`` pixels on all four sides, then a random ``size x size`` crop
   (``Pad`` + ``RandomCrop``); top-left offsets are uniform in ``[0, 2 * pad]``;
6. scale to [0, 1] and normalise, ``(x / 255 - mean) / std`` in float32 (``ToTensor`` +
   ``Normalize``), mean (0.485, 0.456, 0.406) and std 57 / 255 = 0.2235294117647059 on every
   channel (the reference's inference code writes the same as ``(pixel - mean * 255) / 57``);
   the zero padding therefore becomes ``-mean / std``;
7. the reference's own random erasing (:func:`sample_erase_box`; not torchvision's
   ``RandomErasing``) with probability ``erase_prob`` (1.0 in the recipe), *after*
   normalisation: the box holds ``erase_value`` (0) on every channel.

Steps 4-6 run as one shifted copy through a per-channel lookup table (bitwise equal to the
float32 arithmetic of step 6, written directly in the output dtype). The random decisions of one
image are drawn by :meth:`TrainAugment.sample_params` from a ``np.random.Generator`` (grain's
``random_map`` rng) in a fixed order: flip, crop offsets, erasing.

JPEG draft decoding (``jpeg_draft``, off by default, training only as a speed-up): PIL decodes a
JPEG directly at 1/2, 1/4 or 1/8 scale (``Image.draft``), the smallest scale that keeps both
sides >= ``size``, applies the EXIF orientation, and the result is resized with OpenCV as above.
It changes pixels (DCT-domain downscaling instead of decoding every pixel) and only applies to
YCbCr JPEGs at least twice the target size on both sides; other images take the OpenCV path.
Measured on 1024x768 and 1600x1200 photos against the OpenCV path: 0-12 % faster where it
applies, 2-3 grey levels of mean absolute change in the resized image (docs/benchmarks.md).

OpenCV's own thread pool is set to one thread when this module is imported: the pipelines
parallelise over images (worker processes, read threads), and OpenCV's threads on top would
oversubscribe the cores.
"""

from __future__ import annotations

import dataclasses
import io
import math

import cv2
import ml_collections
import ml_dtypes
import numpy as np
from PIL import Image, ImageOps

cv2.setNumThreads(1)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
REFERENCE_STD: tuple[float, float, float] = (57 / 255, 57 / 255, 57 / 255)
# Largest image decoded (pixels): a header claiming more (a "decompression bomb", e.g. a tiny PNG
# announcing 100000 x 100000) is refused before OpenCV allocates its buffer. PIL's own bomb limit
# (2 x Image.MAX_IMAGE_PIXELS, about 179 million pixels, 13377^2), whose header reader is used.
MAX_DECODE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
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


class ImageTooLarge(ImageDecodeError):
    """The header claims more than :data:`MAX_DECODE_PIXELS` pixels (a decompression bomb)."""


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
    (aspect range h/w, drawn uniformly), erase_value (normalised space), erase_attempts,
    jpeg_draft (PIL draft JPEG decoding, an opt-in speed-up that changes pixels), dtype
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
        "erase_ratio": (0.3, 1 / 0.3),
        "erase_value": 0.0,
        "erase_attempts": 100,
        "jpeg_draft": False,
        "dtype": "float32",
    })


def default_eval_preprocess_config(size: int = 384) -> ml_collections.ConfigDict:
    """Evaluation preprocessing: decode, resize straight to size x size, normalise.

    Fields: size, mean, std, jpeg_draft (off: the reference's pixels), dtype.
    """
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


def decode_image(data: bytes, *, row: int = -1) -> np.ndarray:
    """Decodes encoded image bytes exactly as ``cv2.imread`` decodes the file holding them.

    Args:
      data: encoded image (JPEG, PNG, GIF, WebP, TIFF, ... anything the pinned OpenCV reads).
      row: list row of the image, only used in the error message.

    Returns:
      (H, W, 3) uint8 array in OpenCV's BGR channel order, EXIF orientation applied (H, W are
      those after the rotation).

    Raises:
      ImageDecodeError: OpenCV cannot decode the bytes (empty, not an image, truncated, ...).
    """
    if not len(data):
        raise ImageDecodeError(row, "empty data")
    _check_header_size(data, row)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ImageDecodeError(row, f"OpenCV error: {e}") from None
    if image is None:
        raise ImageDecodeError(row, "OpenCV cannot decode it (not an image, truncated or "
                                    "corrupt, or a format this OpenCV build does not read)")
    return image


def _check_header_size(data: bytes, row: int) -> None:
    """Refuses an image whose header claims more than :data:`MAX_DECODE_PIXELS` pixels.

    PIL reads only the header here; bytes PIL does not recognise are left to OpenCV (which has
    its own, larger limit of 2**30 pixels and then fails with an assertion error).
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(row, f"decompression bomb refused: {e}") from None
    except Exception:  # noqa: BLE001 - not parsable by PIL: OpenCV decides below
        return
    if width * height > MAX_DECODE_PIXELS:
        raise ImageTooLarge(row, f"the header claims {width}x{height} pixels, more than "
                                    f"the limit of {MAX_DECODE_PIXELS} (a decompression bomb "
                                    "or a corrupt header)")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """``cv2.resize(image, (size, size))``: bilinear, straight to (size, size, C), no antialias."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def decode_resized(data: bytes, size: int, *, jpeg_draft: bool = False, row: int = -1
                   ) -> np.ndarray:
    """The reference's read + resize + BGR-to-RGB: (size, size, 3) uint8 RGB.

    Equal to ``cv2.cvtColor(cv2.resize(cv2.imread(path), (size, size)), cv2.COLOR_BGR2RGB)``
    for the file holding ``data`` (bilinear resizing treats channels independently, so
    converting after the resize gives the same array and costs less).

    Args:
      data: encoded image bytes.
      size: output side (px).
      jpeg_draft: decode YCbCr JPEGs with PIL at a reduced DCT scale first (faster, changes
        pixels; see the module docstring).
      row: list row of the image, only used in the error message.

    Raises:
      ImageDecodeError: the bytes cannot be decoded.
    """
    if jpeg_draft and data[:3] == b"\xff\xd8\xff":
        image = _decode_jpeg_draft(data, size, row)
        if image is not None:
            return resize(image, size)
    return cv2.cvtColor(resize(decode_image(data, row=row), size), cv2.COLOR_BGR2RGB)


def _decode_jpeg_draft(data: bytes, size: int, row: int) -> np.ndarray | None:
    """PIL draft decode of a YCbCr JPEG at the smallest scale with both sides >= size, EXIF
    orientation applied; (h, w, 3) uint8 RGB, or None for other JPEGs (CMYK, grayscale)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.mode != "RGB":
            return None
        image.draft("RGB", (size, size))
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(row, f"{type(e).__name__}: {e}") from None


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
                     scale: tuple[float, float] = (0.02, 0.2),
                     ratio: tuple[float, float] = (0.3, 1 / 0.3),
                     attempts: int = 100) -> tuple[int, int, int, int] | None:
    """The reference's random-erasing box: (top, left, h, w) in pixels, or None if none fits.

    Each attempt draws area = U(scale) * (H * W) and aspect = U(ratio) (uniform, not
    log-uniform), sets h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)) and accepts
    if h < H and w < W; top is then uniform in [0, H - h] and left in [0, W - w], both ends
    included. After ``attempts`` rejected draws nothing is erased.
    """
    for _ in range(attempts):
        area = rng.uniform(scale[0], scale[1]) * (height * width)
        aspect = rng.uniform(ratio[0], ratio[1])
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
        image = decode_resized(record["image"], self.size, jpeg_draft=self.jpeg_draft, row=row)
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
        image = decode_resized(record["image"], self.size, jpeg_draft=self.jpeg_draft, row=row)
        return {"image": normalize(image, self.lut), "index": np.int32(row),
                "mask": np.bool_(True)}
