"""Augmentations against their definitions and against transcriptions of the reference.

The reference trains on ``cv2.imread`` + ``cv2.resize`` images (BGR -> RGB) transformed by
torchvision's ``RandomHorizontalFlip``, ``Pad``, ``RandomCrop``, ``ToTensor`` and ``Normalize``,
then its own ``RandomErasing``; :func:`_reference_transform` writes those out in PyTorch and
Python, drawing from a Python ``random.Random`` stream that :class:`_Draws` hands to lmr-jax
in the same order (the "fixed draws").
"""

import io
import math
import random

import cv2
import ml_dtypes
import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from lmr_jax.data import augment as A

MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
STD = torch.tensor((57 / 255,) * 3, dtype=torch.float32)[:, None, None]


def _encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((96, 72), Image.Resampling.BICUBIC))
    noisy = smooth.astype(np.int16) + rng.integers(-20, 21, smooth.shape)
    return _encode(np.clip(noisy, 0, 255).astype(np.uint8))


def _cv2_read_resize(data: bytes, size: int) -> np.ndarray:
    """The reference's image reading: cv2 decode, cv2.resize to (size, size), BGR -> RGB."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(image, (size, size)), cv2.COLOR_BGR2RGB)


def _reference_erasing(img: torch.Tensor, rnd: random.Random, probability: float = 1.0,
                       sl: float = 0.02, sh: float = 0.2, r1: float = 0.3):
    """The reference's RandomErasing on a normalised (C, H, W) tensor, fill value 0.

    Returns the tensor and the erased box (top, left, h, w), None when nothing was erased.
    """
    if rnd.uniform(0, 1) >= probability:
        return img, None
    for _ in range(100):
        area = img.size()[1] * img.size()[2]
        target_area = rnd.uniform(sl, sh) * area
        aspect_ratio = rnd.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < img.size()[2] and h < img.size()[1]:
            x1 = rnd.randint(0, img.size()[1] - h)
            y1 = rnd.randint(0, img.size()[2] - w)
            for c in range(3):
                img[c, x1:x1 + h, y1:y1 + w] = 0
            return img, (x1, y1, h, w)
    return img, None


def _reference_transform(image: np.ndarray, pad: int, rnd: random.Random) -> np.ndarray:
    """RandomHorizontalFlip(0.5), Pad(pad), RandomCrop(size), ToTensor, Normalize, erasing.

    ``image``: (size, size, 3) uint8 RGB; returns (size, size, 3) float32.
    """
    size = image.shape[0]
    t = torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
    if rnd.random() < 0.5:                                   # RandomHorizontalFlip
        t = torch.flip(t, dims=[2])
    t = torch.nn.functional.pad(t, (pad, pad, pad, pad))     # Pad, fill 0
    i = rnd.randint(0, t.shape[1] - size)                    # RandomCrop.get_params: i, then j
    j = rnd.randint(0, t.shape[2] - size)
    t = t[:, i:i + size, j:j + size]
    t = t.to(torch.float32).div(255)                         # ToTensor
    t = t.sub(MEAN).div(STD)                                 # Normalize
    t, _ = _reference_erasing(t, rnd)
    return t.permute(1, 2, 0).numpy()


class _Draws:
    """A ``np.random.Generator``-like view of a Python ``random.Random`` stream."""

    def __init__(self, seed: int):
        self._rnd = random.Random(seed)

    def random(self) -> float:
        return self._rnd.random()

    def uniform(self, low: float, high: float) -> float:
        return self._rnd.uniform(low, high)

    def integers(self, low: int, high: int, size: int | None = None):
        if size is None:
            return self._rnd.randint(low, high - 1)
        return np.array([self._rnd.randint(low, high - 1) for _ in range(size)])


def test_normalisation_constants_are_the_reference_ones():
    assert A.REFERENCE_STD == (0.2235294117647059,) * 3
    assert A.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    # The reference's inference code normalises as (pixel - (123.675, 116.28, 103.53)) / 57.
    lut = A.normalization_lut(A.IMAGENET_MEAN, A.REFERENCE_STD)
    v = np.arange(256, dtype=np.float64)
    expected = (v[None] - np.array([123.675, 116.28, 103.53])[:, None]) / 57
    np.testing.assert_allclose(lut, expected, rtol=0, atol=2e-6)


def test_normalization_lut_equals_float32_arithmetic():
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    image = image.astype(np.uint8)
    x = image.astype(np.float32) / np.float32(255)
    x = (x - np.float32(A.IMAGENET_MEAN)) / np.float32(A.REFERENCE_STD)
    lut = A.normalization_lut(A.IMAGENET_MEAN, A.REFERENCE_STD)
    np.testing.assert_array_equal(A.normalize(image, lut), x)
    lut16 = A.normalization_lut(A.IMAGENET_MEAN, A.REFERENCE_STD, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(A.normalize(image, lut16), x.astype(ml_dtypes.bfloat16))


def test_default_pad_reproduces_reference_values():
    assert [A.default_pad(s) for s in (256, 384, 512, 448)] == [10, 15, 20, 18]


def test_flip_pad_crop_equals_explicit_pad_then_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (7, 9, 3), dtype=np.uint8)
    pad = 3
    lut = A.normalization_lut(A.IMAGENET_MEAN, A.REFERENCE_STD)
    for flip in (False, True):
        src = image[:, ::-1] if flip else image
        padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                expected = padded[top:top + 7, left:left + 9]
                got = A.flip_pad_crop(image, flip=flip, pad=pad, top=top, left=left)
                np.testing.assert_array_equal(got, expected)
                fused = A.flip_pad_crop(image, flip=flip, pad=pad, top=top, left=left, lut=lut)
                np.testing.assert_array_equal(fused, A.normalize(expected, lut))
    with pytest.raises(ValueError, match="outside"):
        A.flip_pad_crop(image, flip=False, pad=pad, top=2 * pad + 1, left=0)


def test_padding_is_normalised_zero_and_erasing_writes_zero(jpeg):
    cfg = A.default_augment_config(size=40)
    aug = A.TrainAugment(cfg)
    image = _cv2_read_resize(jpeg, 40)
    base = aug.apply(image, A.AugmentParams(flip=False, top=0, left=0, erase=None))
    expected_pad = (-np.float32([0.485, 0.456, 0.406]) / np.float32(57 / 255))
    np.testing.assert_allclose(base[:2], np.broadcast_to(expected_pad, (2, 40, 3)), rtol=1e-6)
    np.testing.assert_allclose(base[:, :2], np.broadcast_to(expected_pad, (40, 2, 3)), rtol=1e-6)
    erased = aug.apply(image, A.AugmentParams(flip=False, top=0, left=0, erase=(5, 7, 10, 4)))
    mask = np.zeros((40, 40), bool)
    mask[5:15, 7:11] = True
    assert np.all(erased[mask] == 0)
    np.testing.assert_array_equal(erased[~mask], base[~mask])


def test_bfloat16_output_is_the_rounded_float32_output(jpeg):
    cfg = A.default_augment_config(size=32)
    f32 = A.TrainAugment(cfg)({"image": jpeg, "index": 0, "label": 0}, np.random.default_rng(3))
    cfg.dtype = "bfloat16"
    b16 = A.TrainAugment(cfg)({"image": jpeg, "index": 0, "label": 0}, np.random.default_rng(3))
    assert b16["image"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(b16["image"], f32["image"].astype(ml_dtypes.bfloat16))
    cfg.dtype = "float16"
    with pytest.raises(ValueError, match="float16"):
        A.TrainAugment(cfg)


def test_eval_preprocess_matches_reference_and_pads(jpeg):
    cfg = A.default_eval_preprocess_config(size=48)
    pre = A.EvalPreprocess(cfg)
    out = pre({"image": jpeg, "index": 9})
    image = _cv2_read_resize(jpeg, 48)
    t = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32).div(255)
    expected = t.sub(MEAN).div(STD).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out["image"], expected)
    assert out["index"] == 9 and bool(out["mask"])
    padding = pre({"image": None, "index": -1})
    assert not padding["mask"] and padding["index"] == -1
    assert padding["image"].shape == (48, 48, 3) and not padding["image"].any()


def test_train_transform_given_fixed_draws_equals_the_reference_transcription(jpeg):
    cfg = A.default_augment_config(size=40)
    aug = A.TrainAugment(cfg)
    assert aug.pad == 2 and not aug.jpeg_draft
    record = {"image": jpeg, "index": 5, "label": 3}
    resized = _cv2_read_resize(jpeg, 40)
    seen_flip, seen_offsets = set(), set()
    for seed in range(16):
        out = aug(record, _Draws(seed))
        params = aug.sample_params(_Draws(seed))
        seen_flip.add(params.flip)
        seen_offsets.add((params.top, params.left))
        assert params.erase is not None
        assert out["image"].shape == (40, 40, 3) and out["image"].dtype == np.float32
        assert out["label"] == 3 and out["index"] == 5
        np.testing.assert_array_equal(out["image"],
                                      _reference_transform(resized, 2, random.Random(seed)))
    assert seen_flip == {False, True} and len(seen_offsets) > 5


@pytest.mark.parametrize("height,width,scale", [
    (384, 384, (0.02, 0.2)), (37, 53, (0.02, 0.2)), (5, 4, (0.02, 0.2)),
    (3, 3, (0.5, 1.0)),  # most attempts are rejected; some draws never fit (no box)
])
def test_erase_box_given_fixed_draws_equals_the_reference(height, width, scale):
    outcomes = set()
    for seed in range(300):
        _, ref = _reference_erasing(torch.ones(3, height, width), random.Random(seed),
                                    sl=scale[0], sh=scale[1])
        draws = _Draws(seed)
        draws.random()  # the reference's probability draw, uniform(0, 1) >= p
        got = A.sample_erase_box(draws, height, width, scale=scale)
        assert got == ref, seed
        outcomes.add(got is None)
    if height == 3:
        assert outcomes == {False, True}


def test_no_erasing_with_probability_zero():
    cfg = A.default_augment_config(size=40)
    cfg.erase_prob = 0.0
    assert all(A.TrainAugment(cfg).sample_params(np.random.default_rng(i)).erase is None
               for i in range(20))


def _reference_boxes(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """n boxes (top, left, h, w) drawn by the reference's formulas with Python's random."""
    rnd = random.Random(seed)
    boxes = []
    while len(boxes) < n:
        target_area = rnd.uniform(0.02, 0.2) * (height * width)
        aspect_ratio = rnd.uniform(0.3, 1 / 0.3)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            boxes.append((rnd.randint(0, height - h), rnd.randint(0, width - w), h, w))
    return np.array(boxes)


def test_random_decisions_follow_the_reference_distributions():
    aug = A.TrainAugment(A.default_augment_config(size=384))
    n = 4000
    params = [aug.sample_params(np.random.default_rng([7, i])) for i in range(n)]
    assert abs(np.mean([p.flip for p in params]) - 0.5) < 0.04
    offsets = np.array([(p.top, p.left) for p in params])
    counts = np.bincount(offsets.ravel(), minlength=31)
    assert counts.size == 31
    assert scipy.stats.chisquare(counts).pvalue > 1e-3            # uniform over [0, 30]
    got = np.array([p.erase for p in params])
    ref = _reference_boxes(n, 384, 384, seed=1)
    for name, stat in (("area", lambda b: b[:, 2] * b[:, 3]), ("aspect", lambda b: b[:, 2] / b[:, 3]),
                       ("top", lambda b: b[:, 0] / (384 - b[:, 2])),
                       ("left", lambda b: b[:, 1] / (384 - b[:, 3]))):
        assert scipy.stats.ks_2samp(stat(got), stat(ref)).pvalue > 1e-3, name
    # Uniform (not log-uniform) aspect: as many boxes with h / w above the middle of
    # [0.3, 1 / 0.3] as below it would mean log-uniform; the reference gives ~ 0.5 above 1.82.
    middle = (0.3 + 1 / 0.3) / 2
    assert abs(np.mean(got[:, 2] / got[:, 3] > middle) - np.mean(ref[:, 2] / ref[:, 3] > middle)) \
        < 0.04
