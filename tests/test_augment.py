"""Augmentations against their definitions and against a PyTorch rendering of the reference."""

import io

import ml_dtypes
import numpy as np
import pytest
import torch
from PIL import Image

from lmr_jax.data import augment as A

MEAN = torch.tensor(A.IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
STD = torch.tensor(A.REFERENCE_STD, dtype=torch.float32)[:, None, None]


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


def _torch_reference(data: bytes, size: int, pad: int, params: A.AugmentParams) -> np.ndarray:
    """Resize(PIL bilinear) -> flip -> Pad -> crop -> ToTensor -> Normalize -> erase(0), CHW."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    if params.flip:
        t = torch.flip(t, dims=[2])
    t = torch.nn.functional.pad(t, (pad, pad, pad, pad))
    t = t[:, params.top:params.top + size, params.left:params.left + size]
    t = t.to(torch.float32).div(255)
    t = t.sub(MEAN).div(STD)
    if params.erase is not None:
        i, j, h, w = params.erase
        t[:, i:i + h, j:j + w] = 0
    return t.permute(1, 2, 0).numpy()


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


def test_train_transform_matches_torch_reference(jpeg):
    cfg = A.default_augment_config(size=40)
    cfg.jpeg_draft = False
    aug = A.TrainAugment(cfg)
    assert aug.pad == 2
    record = {"image": jpeg, "index": 5, "label": 3}
    seen_flip = set()
    for seed in range(12):
        out = aug(record, np.random.default_rng(seed))
        params = aug.sample_params(np.random.default_rng(seed))
        seen_flip.add(params.flip)
        assert params.erase is not None
        assert out["image"].shape == (40, 40, 3) and out["image"].dtype == np.float32
        assert out["label"] == 3 and out["index"] == 5
        np.testing.assert_array_equal(out["image"], _torch_reference(jpeg, 40, 2, params))
    assert seen_flip == {False, True}


def test_padding_is_normalised_zero_and_erasing_writes_zero(jpeg):
    cfg = A.default_augment_config(size=40)
    aug = A.TrainAugment(cfg)
    image = A.resize(A.decode_image(jpeg), 40)
    base = aug.apply(image, A.AugmentParams(flip=False, top=0, left=0, erase=None))
    expected_pad = (-np.asarray(A.IMAGENET_MEAN, np.float32) / np.float32(0.2235))
    np.testing.assert_allclose(base[:2], np.broadcast_to(expected_pad, (2, 40, 3)), rtol=1e-6)
    np.testing.assert_allclose(base[:, :2], np.broadcast_to(expected_pad, (40, 2, 3)), rtol=1e-6)
    erased = aug.apply(image, A.AugmentParams(flip=False, top=0, left=0, erase=(5, 7, 10, 4)))
    mask = np.zeros((40, 40), bool)
    mask[5:15, 7:11] = True
    assert np.all(erased[mask] == 0)
    np.testing.assert_array_equal(erased[~mask], base[~mask])


def test_random_decisions_follow_their_distributions():
    aug = A.TrainAugment(A.default_augment_config(size=384))
    n = 3000
    params = [aug.sample_params(np.random.default_rng([7, i])) for i in range(n)]
    flips = np.mean([p.flip for p in params])
    assert abs(flips - 0.5) < 0.04
    offsets = np.array([(p.top, p.left) for p in params])
    counts = np.bincount(offsets.ravel(), minlength=31)
    assert counts.size == 31 and counts.min() > 0.6 * 2 * n / 31 and counts.max() < 1.4 * 2 * n / 31
    boxes = np.array([p.erase for p in params])
    top, left, h, w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= 384) and np.all(left + w <= 384)
    frac = h * w / 384.0**2
    # Rounding h and w moves the area by at most ~(h + w) / 2 px.
    slack = (h + w) / 2 / 384.0**2
    assert np.all(frac >= 0.02 - slack) and np.all(frac <= 0.2 + slack)
    assert abs(frac.mean() - 0.11) < 0.005
    log_aspect = np.log(h / w)
    assert log_aspect.min() > np.log(0.3) - 0.1 and log_aspect.max() < np.log(3.33) + 0.1
    assert abs(np.mean(log_aspect > 0) - 0.5) < 0.04
    # Top-left is uniform over the valid range: both ends are reached.
    assert (top == 0).any() and (top == 384 - h).any()


def test_erase_box_gives_up_when_nothing_fits():
    rng = np.random.default_rng(0)
    assert A.sample_erase_box(rng, 3, 3, scale=(0.95, 1.0), ratio=(1.0, 1.0)) is None
    assert A.sample_erase_box(rng, 100, 100, scale=(0.04, 0.04), ratio=(1.0, 1.0)) is not None
    cfg = A.default_augment_config(size=40)
    cfg.erase_prob = 0.0
    p = A.TrainAugment(cfg).sample_params(rng)
    assert p.erase is None


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


def test_jpeg_draft_decodes_at_reduced_scale_only_when_large_enough():
    rng = np.random.default_rng(0)
    data = _encode(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
    assert A.decode_image(data).size == (200, 160)
    assert A.decode_image(data, draft_size=64).size == (100, 80)     # 1/2; 1/4 would be < 64
    assert A.decode_image(data, draft_size=90).size == (200, 160)    # 1/2 would give 80 < 90


def test_decode_converts_other_modes_to_rgb():
    rng = np.random.default_rng(0)
    gray = _encode(rng.integers(0, 256, (20, 30), dtype=np.uint8), "PNG")
    rgba = _encode(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "PNG")
    for data in (gray, rgba):
        image = A.decode_image(data)
        assert image.mode == "RGB" and image.size == (30, 20)


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_undecodable_bytes_raise_decode_error_naming_the_row(jpeg, data):
    data = jpeg[: len(jpeg) // 2] if data is None else data
    with pytest.raises(A.ImageDecodeError, match="list row 17") as info:
        A.decode_image(data, row=17)
    assert info.value.row == 17


def test_eval_preprocess_matches_torch_reference_and_pads(jpeg):
    cfg = A.default_eval_preprocess_config(size=48)
    pre = A.EvalPreprocess(cfg)
    out = pre({"image": jpeg, "index": 9})
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((48, 48), Image.BILINEAR)
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(torch.float32).div(255)
    expected = t.sub(MEAN).div(STD).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out["image"], expected)
    assert out["index"] == 9 and bool(out["mask"])
    padding = pre({"image": None, "index": -1})
    assert not padding["mask"] and padding["index"] == -1
    assert padding["image"].shape == (48, 48, 3) and not padding["image"].any()
