"""Bad inputs of the fault suite: broken image files and damaged checkpoints, by kind."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_KINDS = ("truncated_jpeg", "corrupt_jpeg", "truncated_png", "zero_byte", "html_as_jpg",
               "bomb_png")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid ~70-byte PNG whose header claims ``width x height`` RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 49)) + chunk(b"IEND", b""))


def make(kind: str) -> bytes:
    """The bytes of a bad image file of ``kind`` (one of :data:`IMAGE_KINDS`)."""
    if kind == "truncated_jpeg":
        return _jpeg()[:200]
    if kind == "corrupt_jpeg":  # JPEG markers kept, entropy-coded data and tables overwritten
        data = bytearray(_jpeg())
        data[20:] = b"\x00" * (len(data) - 22) + data[-2:]
        return bytes(data)
    if kind == "truncated_png":
        return _png()[:60]
    if kind == "zero_byte":
        return b""
    if kind == "html_as_jpg":
        return b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"
    if kind == "bomb_png":
        return bomb_png()
    raise ValueError(kind)


def damage_checkpoint(step_dir: Path, how: str) -> None:
    """Damage an orbax checkpoint directory: ``truncate`` every array file of its state to half,
    or ``garble_meta`` its meta JSON."""
    step_dir = Path(step_dir)
    if how == "truncate":
        files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
                 and p.stat().st_size > 64 and "metadata" not in p.name]
        assert files, f"no array files under {step_dir}/state"
        for p in files:
            data = p.read_bytes()
            p.write_bytes(data[:len(data) // 2])
    elif how == "garble_meta":
        metas = [p for p in (step_dir / "meta").rglob("*") if p.is_file()]
        assert metas
        for p in metas:
            p.write_text('{"stage": 1, "step": ')
    else:
        raise ValueError(how)
