"""Baidu's inference preprocessing against a transcription of its tools' steps (cv2 called
step by step here, sizes worked out by hand from the rule in docs/baidu.md)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lmr_jax.data import baidu_preprocess as bp

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3)).astype(np.uint8)
    return np.clip(cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST).astype(int)
                   + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def baidu_steps(img: np.ndarray, h: int, w: int, interpolation: int) -> np.ndarray:
    """cv2.resize to (w, h), BGR -> RGB, /255, ImageNet mean / std (float64)."""
    resized = cv2.resize(img, (w, h), interpolation=interpolation)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0
    return (rgb - MEAN) / STD


# (H, W, size) -> (h, w), by hand:
#   300x200 @448: short 200, 300*448/200 = 672 (21 x 32), 448 -> (672, 448)
#   333x500 @448: short 333, 500*448/333 = 672.7 -> 673 -> 672; 448 -> (448, 672)
#   250x1000 @448: ratio 4 > 3: size int(448*3/4) = 336 -> 320; 1000*336/250 = 1344
#     -> (320, 1344)
#   401x601 @555: 555 -> 544; 601*555/401 = 831.8 -> 832 (26 x 32) -> (544, 832)
#   40x20 @448: 896, 448 -> (896, 448) (upscaled)
SIZES = [((300, 200, 448), (672, 448)), ((333, 500, 448), (448, 672)),
         ((250, 1000, 448), (320, 1344)), ((401, 601, 555), (544, 832)),
         ((40, 20, 448), (896, 448))]


@pytest.mark.parametrize("case,want", SIZES)
def test_retrieval_preprocess_sizes_and_pixels(case, want):
    h, w, size = case
    img = image(h, w)
    out = bp.retrieval_preprocess(img, size)
    assert out.shape == (*want, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, baidu_steps(img, *want, cv2.INTER_LANCZOS4), atol=2e-5)


def test_very_elongated_image_keeps_a_32_px_minimum():
    assert bp.retrieval_preprocess(image(20, 900), 448).shape[:2] == (32, 1280)
    # ratio 45 > 3: size int(448 * 3 / 45) = 29; 20 -> 29 -> floored 0 -> 32; 900 -> 1305 -> 1280
    assert bp.resized_shape(20, 900, 29) == (32, 1280)


def test_retrieval_size_of_arch():
    assert bp.retrieval_size("inception_v4") == 555 and bp.retrieval_size("resnet152_vd") == 448


@pytest.mark.parametrize("h,w", [(300, 400), (224, 224), (500, 301)])
def test_classification_preprocess_is_resize_then_centre_crop(h, w):
    img = image(h, w, seed=1)
    short = min(h, w)
    rh, rw = (round(h * 224 / short) // 32 * 32, round(w * 224 / short) // 32 * 32)
    full = baidu_steps(img, rh, rw, cv2.INTER_LINEAR)
    top, left = (rh - 224) // 2, (rw - 224) // 2
    out = bp.classification_preprocess(img)
    assert out.shape == (224, 224, 3)
    np.testing.assert_allclose(out, full[top:top + 224, left:left + 224], atol=2e-5)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8 BGR"):
        bp.retrieval_preprocess(np.zeros((10, 10), np.uint8))
