"""Reading Paddle 1.x saved variables without Paddle (numpy and struct only).

A saved variable is one ``LoDTensor`` record (little-endian, no alignment):

1. uint32 LoDTensor version (0);
2. uint64 LoD level count, then per level a uint64 byte count and that many bytes of offsets;
3. uint32 Tensor version (0);
4. int32 n, then n bytes of a ``VarType.TensorDesc`` protobuf: field 1 ``data_type`` (varint
   enum, see ``PADDLE_DTYPES``), field 2 ``dims`` (int64, repeated: one tag per value, or packed);
5. prod(dims) * itemsize bytes of row-major data.

Layouts on disk:

* a directory with one file per variable (``save_persistables`` / ``save_params`` /
  ``save_vars`` without a file name, as the Baidu release tars hold them): each file is one
  record and is named exactly as the variable (names contain dots, no extension);
* a combined file (``save_inference_model(..., params_filename='params')``, the
  ``save_combine`` op): the records of all persistable variables concatenated in
  ``sorted()`` order of their names, with no header, no names and no count. Its names come
  from the architecture (``lmr_jax.convert.paddle_names``).

(Paddle 2.x/3.x ``.pdparams`` files are pickles, a different format.)
"""

from __future__ import annotations

import os
import struct

import ml_dtypes
import numpy as np

# VarType.Type values of framework.proto that a tensor record can hold -> numpy dtype.
PADDLE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.bool_),
    1: np.dtype("<i2"),
    2: np.dtype("<i4"),
    3: np.dtype("<i8"),
    4: np.dtype("<f2"),
    5: np.dtype("<f4"),
    6: np.dtype("<f8"),
    19: np.dtype("<u8"),  # SIZE_T
    20: np.dtype(np.uint8),
    21: np.dtype(np.int8),
    22: np.dtype(ml_dtypes.bfloat16),
    23: np.dtype("<c8"),
    24: np.dtype("<c16"),
}
# Names of files that sit in a model directory but are not variables.
PROGRAM_FILES = ("__model__", "model")
COMBINED_PARAMS_FILES = ("__params__", "params")


class PaddleFormatError(ValueError):
    """A file is not a readable Paddle 1.x tensor record (names the file and byte offset)."""


def _read_varint(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise PaddleFormatError(f"{where}: truncated varint in the TensorDesc")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PaddleFormatError(f"{where}: varint longer than 10 bytes in the TensorDesc")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_tensor_desc(desc: bytes, where: str = "TensorDesc") -> tuple[int, tuple[int, ...]]:
    """(data_type, dims) of a serialized ``VarType.TensorDesc`` (packed or unpacked dims)."""
    pos, end = 0, len(desc)
    data_type = None
    dims: list[int] = []
    while pos < end:
        tag, pos = _read_varint(desc, pos, end, where)
        field, wire = tag >> 3, tag & 7
        if field == 1 and wire == 0:
            data_type, pos = _read_varint(desc, pos, end, where)
        elif field == 2 and wire == 0:
            dim, pos = _read_varint(desc, pos, end, where)
            dims.append(_signed64(dim))
        elif field == 2 and wire == 2:
            length, pos = _read_varint(desc, pos, end, where)
            stop = pos + length
            if stop > end:
                raise PaddleFormatError(f"{where}: packed dims run past the TensorDesc")
            while pos < stop:
                dim, pos = _read_varint(desc, pos, stop, where)
                dims.append(_signed64(dim))
        elif wire == 0:
            _, pos = _read_varint(desc, pos, end, where)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(desc, pos, end, where)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise PaddleFormatError(f"{where}: unsupported protobuf wire type {wire}")
    if pos != end:
        raise PaddleFormatError(f"{where}: a field runs past the end of the TensorDesc")
    if data_type is None:
        raise PaddleFormatError(f"{where}: the TensorDesc has no data_type")
    if any(d < 0 for d in dims):
        raise PaddleFormatError(f"{where}: negative dims {tuple(dims)} in a saved tensor")
    return data_type, tuple(dims)


def read_record(buf: bytes, offset: int, where: str) -> tuple[np.ndarray, int]:
    """One LoDTensor record at ``offset`` of ``buf`` -> (array, offset after it).

    The array has the record's dtype and dims (a copy, C order). ``where`` names the source in
    errors. LoD offsets (absent for parameters) are read and dropped.
    """
    end = len(buf)

    def take(n: int, what: str) -> int:
        nonlocal offset
        if offset + n > end:
            raise PaddleFormatError(f"{where}: truncated at byte {offset} (reading {what}, "
                                    f"{n} bytes, {end - offset} left)")
        start = offset
        offset += n
        return start

    start = offset
    (lod_version,) = struct.unpack_from("<I", buf, take(4, "LoDTensor version"))
    if lod_version != 0:
        raise PaddleFormatError(f"{where}: LoDTensor version {lod_version} at byte {start}, "
                                "expected 0 (not a Paddle 1.x tensor record)")
    (lod_levels,) = struct.unpack_from("<Q", buf, take(8, "LoD level count"))
    if lod_levels > 16:
        raise PaddleFormatError(f"{where}: implausible LoD level count {lod_levels}")
    for _ in range(lod_levels):
        (nbytes,) = struct.unpack_from("<Q", buf, take(8, "LoD level size"))
        take(nbytes, "LoD offsets")
    (tensor_version,) = struct.unpack_from("<I", buf, take(4, "Tensor version"))
    if tensor_version != 0:
        raise PaddleFormatError(f"{where}: Tensor version {tensor_version}, expected 0")
    (desc_size,) = struct.unpack_from("<i", buf, take(4, "TensorDesc size"))
    if desc_size < 0:
        raise PaddleFormatError(f"{where}: negative TensorDesc size {desc_size}")
    desc_at = take(desc_size, "TensorDesc")
    data_type, dims = parse_tensor_desc(bytes(buf[desc_at:desc_at + desc_size]), where)
    if data_type not in PADDLE_DTYPES:
        raise PaddleFormatError(f"{where}: unsupported data_type {data_type} "
                                f"(known: {sorted(PADDLE_DTYPES)})")
    dtype = PADDLE_DTYPES[data_type]
    count = int(np.prod(dims, dtype=np.int64))
    data_at = take(count * dtype.itemsize, f"{count} values of {dtype.name}")
    array = np.frombuffer(buf, dtype, count, data_at).reshape(dims).copy()
    return array, offset


def read_variable_file(path: str) -> np.ndarray:
    """A one-variable file (exactly one record, nothing after it)."""
    with open(path, "rb") as f:
        buf = f.read()
    array, end = read_record(buf, 0, path)
    if end != len(buf):
        raise PaddleFormatError(f"{path}: {len(buf) - end} bytes after the tensor record "
                                "(a combined params file? pass it as a file, not a directory)")
    return array


def read_variable_dir(path: str) -> dict[str, np.ndarray]:
    """Every variable of a one-file-per-variable directory: {file name: array}.

    Program files (``__model__``, ``model``) and hidden files are not variables and are
    left out; sub-directories are not read.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory")
    arrays = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name in PROGRAM_FILES or name.startswith(".") or not os.path.isfile(full):
            continue
        arrays[name] = read_variable_file(full)
    if not arrays:
        raise PaddleFormatError(f"{path}: no variable files")
    return arrays


def read_combined_records(path: str) -> list[np.ndarray]:
    """All records of a combined params file, in file order (their names are not stored)."""
    with open(path, "rb") as f:
        buf = f.read()
    records = []
    offset = 0
    while offset < len(buf):
        array, offset = read_record(buf, offset, f"{path} (record {len(records)})")
        records.append(array)
    if not records:
        raise PaddleFormatError(f"{path}: empty file")
    return records


def name_combined_records(records: list[np.ndarray], names: list[str],
                          where: str) -> dict[str, np.ndarray]:
    """Gives the records of a combined file their names: the names in ``sorted()`` order.

    Raises:
      PaddleFormatError: the counts differ.
    """
    ordered = sorted(names)
    if len(ordered) != len(records):
        raise PaddleFormatError(f"{where}: {len(records)} records but the architecture has "
                                f"{len(ordered)} persistable variables")
    return dict(zip(ordered, records, strict=True))
