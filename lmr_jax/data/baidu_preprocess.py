"""The inference preprocessing of Baidu's GLR2019 tools (docs/baidu.md, Preprocessing).

Both take an image as OpenCV decodes it ((H, W, 3) uint8 BGR, :func:`lmr_jax.data.augment.
decode_image`) and return a float32 (h, w, 3) RGB array normalised with the ImageNet mean and
standard deviation, ready for the NHWC models:

* :func:`retrieval_preprocess` (``infer_retrieval.py``): the short side resized to ``size``
  (448; 555 for Inception-v4), the aspect ratio kept, each side ``round(side * size / short)``
  and then floored to a multiple of 32 (at least 32), Lanczos (``cv2.INTER_LANCZOS4``), no
  crop. If the long side exceeds 3x the short one, ``size`` becomes
  ``int(size * 3 / ratio)`` first.
* :func:`classification_preprocess` (``infer_recognition.py``): the same short-side resize to
  224 with the floor to 32 (bilinear, ``cv2.INTER_LINEAR``), then a centre 224 x 224 crop at
  integer offsets ``(side - 224) // 2``.
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixel values / 255
IMAGENET_STD = (0.229, 0.224, 0.225)
RETRIEVAL_SIZE = 448
INCEPTION_RETRIEVAL_SIZE = 555  # Baidu's Inception-v4 input size (544 after the floor)
CLASSIFICATION_SIZE = 224
SIDE_MULTIPLE = 32
MAX_ASPECT = 3.0


def retrieval_size(arch: str) -> int:
    """Baidu's retrieval input size of a backbone: 555 for ``inception_v4``, else 448."""
    return INCEPTION_RETRIEVAL_SIZE if arch == "inception_v4" else RETRIEVAL_SIZE


def resized_shape(height: int, width: int, size: int, *, minimum: int = SIDE_MULTIPLE
                  ) -> tuple[int, int]:
    """(h, w) of the short-side resize: ``round(side * size / short)`` floored to a multiple
    of 32, at least ``minimum``."""
    if height < 1 or width < 1:
        raise ValueError(f"image of {height}x{width} pixels")
    short = min(height, width)

    def side(n: int) -> int:
        return max(int(round(n * size / short)) // SIDE_MULTIPLE * SIDE_MULTIPLE, minimum)

    return side(height), side(width)


def normalize_bgr(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR uint8 -> (H, W, 3) float32 RGB, ``(x / 255 - mean) / std``."""
    rgb = image[:, :, ::-1].astype(np.float32) / 255.0
    return (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image.shape} "
                         f"{image.dtype}")


def retrieval_preprocess(image: np.ndarray, size: int = RETRIEVAL_SIZE) -> np.ndarray:
    """Baidu's retrieval preprocessing: (H, W, 3) uint8 BGR -> (h, w, 3) float32 RGB."""
    _check(image)
    height, width = image.shape[:2]
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        size = int(size * MAX_ASPECT / ratio)
    h, w = resized_shape(height, width, size)
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LANCZOS4)
    return normalize_bgr(resized)


def classification_preprocess(image: np.ndarray, size: int = CLASSIFICATION_SIZE
                              ) -> np.ndarray:
    """Baidu's classification preprocessing: (H, W, 3) uint8 BGR -> (size, size, 3) float32."""
    _check(image)
    h, w = resized_shape(*image.shape[:2], size, minimum=0)
    if h < size or w < size:
        raise ValueError(f"a {image.shape[0]}x{image.shape[1]} image resizes to {h}x{w}, "
                         f"smaller than the {size} px crop")
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = (h - size) // 2, (w - size) // 2
    return normalize_bgr(resized[top:top + size, left:left + size])
