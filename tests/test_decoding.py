"""Decoding + resizing equals the reference's OpenCV reading of the original file, exactly.

The reference reads every image with ``cv2.imread(path)`` (BGR, EXIF orientation applied),
resizes with ``cv2.resize(img, (S, S))`` and converts BGR to RGB. The files are written here
with PIL (JPEG, PNG, GIF, WebP; grayscale, CMYK, palette, alpha, 16-bit; EXIF orientations 1-8;
odd sizes) and lmr-jax decodes their bytes from memory, from a prepared store and from the
direct-file source.
"""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from lmr_jax.data import augment as A
from lmr_jax.data import store
from lmr_jax.data.lists import ImageList

SIZES = (24, 64)  # shrinking (by more than 2x for the larger files) and enlarging


def _reference(path, size: int) -> np.ndarray:
    """The reference's reading of a file: cv2.imread, cv2.resize (its default), BGR -> RGB."""
    image = cv2.imread(str(path))
    assert image is not None, f"cv2.imread cannot read {path}"
    return cv2.cvtColor(cv2.resize(image, (size, size)), cv2.COLOR_BGR2RGB)


def _photo(seed: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: a smooth colour field plus noise (JPEG-like content)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    return np.clip(smooth + rng.integers(-25, 26, smooth.shape), 0, 255).astype(np.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _files() -> dict[str, tuple[Image.Image, str, dict]]:
    """name -> (PIL image, format, save options); every name becomes ``<name>.jpg`` on disk."""
    rgb = Image.fromarray(_photo(0, 53, 37))
    big = Image.fromarray(_photo(1, 301, 203))
    rgba = Image.fromarray(np.dstack([_photo(2, 41, 29), _photo(3, 41, 29)[..., 0]]))
    palette_alpha = rgb.convert("P")
    files = {
        "jpeg": (rgb, "JPEG", {"quality": 90}),
        "jpeg_big": (big, "JPEG", {"quality": 85}),
        "jpeg_progressive": (big, "JPEG", {"quality": 80, "progressive": True}),
        "jpeg_gray": (rgb.convert("L"), "JPEG", {}),
        "jpeg_cmyk": (rgb.convert("CMYK"), "JPEG", {}),
        "png": (rgb, "PNG", {}),
        "png_gray": (rgb.convert("L"), "PNG", {}),
        "png_gray16": (Image.fromarray(_photo(4, 33, 47)[..., 0].astype(np.uint16) * 257), "PNG",
                       {}),
        "png_rgba": (rgba, "PNG", {}),
        "png_la": (rgba.convert("LA"), "PNG", {}),
        "png_palette": (rgb.convert("P"), "PNG", {}),
        "png_palette_alpha": (palette_alpha, "PNG", {"transparency": 7}),
        "gif": (rgb, "GIF", {}),
        "webp": (big, "WEBP", {"quality": 80}),
    }
    for o in range(1, 9):
        files[f"jpeg_exif{o}"] = (big if o % 2 else rgb, "JPEG", {"exif": _exif(o)})
    files["png_exif6"] = (rgb, "PNG", {"exif": _exif(6)})
    return files


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """The files in GLDv2 layout (``train/a/b/c/<id>.jpg``); returns (root, ids)."""
    root = tmp_path_factory.mktemp("decoding") / "gldv2"
    ids = []
    for name, (image, fmt, options) in _files().items():
        image_id = "abc" + name
        path = root / store.key_relpath(f"train/{image_id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format=fmt, **options)
        ids.append(image_id)
    return root, ids


def _list(ids) -> ImageList:
    n = len(ids)
    return ImageList(ids=ids, labels=np.zeros(n, np.int64), noisy=np.zeros(n, bool),
                     countries=[""] * n, continents=["OTHER"] * n, num_classes=1, name="files")


def test_orientations_and_modes_are_really_exercised(image_root):
    """The fixture files differ from a plain pixel read where they should (else tests are weak)."""
    root, _ = image_root
    path = root / store.key_relpath("train/abcjpeg_exif5")
    assert cv2.imread(str(path)).shape == (301, 203, 3)  # rotated a quarter turn
    assert np.asarray(Image.open(path)).shape == (203, 301, 3)  # the stored pixels
    for o in (2, 3, 4, 5, 7, 8):
        path = root / store.key_relpath(f"train/abcjpeg_exif{o}")
        plain = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert plain.shape != cv2.imread(str(path)).shape or \
            not np.array_equal(plain, cv2.imread(str(path)))


def test_decoding_bytes_equals_cv2_imread_of_the_file(image_root):
    root, ids = image_root
    for image_id in ids:
        path = root / store.key_relpath(f"train/{image_id}")
        np.testing.assert_array_equal(A.decode_image(path.read_bytes()), cv2.imread(str(path)),
                                      err_msg=image_id)
        for size in SIZES:
            got = A.decode_resized(path.read_bytes(), size)
            assert got.dtype == np.uint8 and got.shape == (size, size, 3)
            np.testing.assert_array_equal(got, _reference(path, size), err_msg=image_id)


def test_store_and_file_sources_give_the_reference_pixels(image_root, tmp_path):
    root, ids = image_root
    result = store.write_store(tmp_path / "store", [f"train/{i}" for i in ids], root,
                               progress=False)
    assert result.bad == [] and result.changed == 0
    image_list = _list(ids)
    sources = {"store": store.open_source(image_list, tmp_path / "store"),
               "files": store.open_source(image_list, root)}
    assert isinstance(sources["store"], store.StoreSource)
    assert isinstance(sources["files"], store.FileSource)
    preprocess = A.EvalPreprocess(A.default_eval_preprocess_config(size=SIZES[0]))
    lut = A.normalization_lut(A.IMAGENET_MEAN, A.REFERENCE_STD)
    for name, source in sources.items():
        for i, image_id in enumerate(ids):
            path = root / store.key_relpath(f"train/{image_id}")
            data = source[i]["image"]
            for size in SIZES:
                np.testing.assert_array_equal(A.decode_resized(data, size),
                                              _reference(path, size), err_msg=f"{name} {image_id}")
            out = preprocess({"image": data, "index": i})["image"]
            np.testing.assert_array_equal(out, A.normalize(_reference(path, SIZES[0]), lut),
                                          err_msg=f"{name} {image_id}")


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"), (b"<html>gone</html>", "OpenCV cannot decode"),
    (None, "OpenCV cannot decode"),
])
def test_undecodable_bytes_raise_decode_error_naming_the_row(data, reason):
    if data is None:  # a truncated JPEG: OpenCV gives no image, never a partly grey one
        buf = io.BytesIO()
        Image.fromarray(_photo(5, 64, 48)).save(buf, "JPEG")
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
    for decode, match in ((lambda: A.decode_image(data, row=17), reason),
                          (lambda: A.decode_resized(data, 32, row=17), reason),
                          (lambda: A.decode_resized(data, 32, jpeg_draft=True, row=17), None)):
        with pytest.raises(A.ImageDecodeError, match=match) as info:
            decode()
        assert info.value.row == 17 and "list row 17" in str(info.value)


def test_jpeg_draft_is_close_to_the_reference_and_keeps_the_orientation(image_root):
    """The opt-in PIL draft decode changes pixels a little, applies EXIF orientation."""
    root, _ = image_root
    for name in ("jpeg_big", "jpeg_exif3", "jpeg_exif5", "jpeg_exif7"):
        path = root / store.key_relpath(f"train/abc{name}")
        ref = _reference(path, 64).astype(np.float32)
        draft = A.decode_resized(path.read_bytes(), 64, jpeg_draft=True)  # 301x203: 1/2 scale
        assert draft.shape == (64, 64, 3)
        assert 0 < np.abs(draft - ref).mean() < 6, name
    # CMYK and grayscale JPEGs are not drafted: they take the OpenCV path.
    for name in ("jpeg_cmyk", "jpeg_gray"):
        path = root / store.key_relpath(f"train/abc{name}")
        np.testing.assert_array_equal(A.decode_resized(path.read_bytes(), 24, jpeg_draft=True),
                                      _reference(path, 24))
