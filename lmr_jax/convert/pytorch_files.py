"""Reading PyTorch weight files without PyTorch: ``torch.save`` files and ``.safetensors``.

A ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ...) is a pickle of the saved
object whose tensors point, through pickle "persistent ids", at raw storages kept beside it:

* zip format (PyTorch >= 1.6, the default): a zip archive ``<name>/data.pkl`` (the pickle),
  ``<name>/data/<key>`` (one raw storage each, in the byte order of ``<name>/byteorder``,
  little-endian when absent) and a few version records;
* legacy format (``_use_new_zipfile_serialization=False`` and files from before 1.6): four
  pickles in a row -- the magic number, the protocol version (1001), a dict with
  ``little_endian``, the object -- then a pickled list of storage keys, and for each key in
  that order an int64 element count followed by the storage's raw bytes.

The pickle is read by a restricted unpickler: the only globals it resolves are PyTorch's tensor
rebuild functions (``torch._utils._rebuild_tensor_v2`` and relatives), its storage types (the
typed ``torch.FloatStorage`` ... of older files and ``torch.UntypedStorage``) and
``collections.OrderedDict``; each is replaced by a numpy implementation here. Any other global (a
pickled ``nn.Module``, a custom class, ``os.system`` in a malicious ``__reduce__``) stops the
read with an error naming it, before anything could run. Tensors come back as numpy arrays with
their dtype, shape, strides and storage offset honoured; tensors sharing a storage are read from
one copy of it (each returned array owns its data).

``.safetensors`` files are read with ``safetensors.numpy``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# Entries that wrap the state_dict in training checkpoints, tried in this order.
WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
# The first pickle of a legacy-format file, and its protocol version.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# PyTorch storage type name -> numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}


class CheckpointFormatError(ValueError):
    """The file is not a readable plain weights checkpoint."""


class _StorageType:
    """Stands for a PyTorch storage class in the pickle (only its element dtype matters)."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
    """A tensor from its storage (1-D array), offset, shape and strides, all in elements.

    Returns a read-only view of ``storage`` (a legacy file's storage bytes are read only after
    the pickle); ``read_torch_file`` copies it once every storage is filled.
    """
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise CheckpointFormatError(f"tensor of shape {size} with strides {stride}")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    if storage_offset < 0 or any(s < 0 for s in stride):
        raise CheckpointFormatError(
            f"tensor with storage offset {storage_offset} and strides {stride}")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise CheckpointFormatError(
            f"tensor of shape {size}, strides {stride}, offset {storage_offset} reaches element "
            f"{last} of a storage of {storage.size}")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride),
        writeable=False)


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False,
                       backward_hooks: Any = None, state: Any = None) -> np.ndarray:
    """``nn.Parameter`` -> its data (the parameter flag is not kept)."""
    return data


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: tuple,
                          state: Any) -> Any:
    """A tensor saved with its Python type: only ``torch.Tensor`` and ``nn.Parameter``."""
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise CheckpointFormatError(f"tensor of a custom subclass {new_type!r}")
    return func(*args)


_TENSOR_TYPE = object()
_PARAMETER_TYPE = object()

# (module, name) -> what it stands for; every other global is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    **{("torch.storage", name): _StorageType(name) for name in ("UntypedStorage",)},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED_GLOBALS``; storages come from ``load_storage(key, dtype, numel)``."""

    def __init__(self, file: BinaryIO, path: str,
                 load_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointFormatError(
                f"{self._path}: not a plain weights checkpoint: it needs the Python global "
                f"{module}.{name}, which is not a tensor, a storage or a plain container, so "
                "the file is refused and nothing in it is run. Only tensors, numbers, strings "
                "and (ordered) dicts, lists and tuples of them are read; a pickled nn.Module or "
                "a custom class is not. If you trust the file, load it in PyTorch and save "
                "model.state_dict() (or write safetensors).") from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointFormatError(f"{self._path}: unknown persistent id {pid!r:.100}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        storage = self._load_storage(key, storage_type.dtype, numel)
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # a view of a storage (files of PyTorch < 0.4)
            _, offset, view_size = view
            return storage[int(offset):int(offset) + int(view_size)]
        return storage


def _unpickle(f: BinaryIO, path: str, load_storage: Callable[[str, np.dtype, int], np.ndarray],
              what: str) -> Any:
    """One restricted pickle from ``f``; every failure becomes a CheckpointFormatError naming
    ``path`` and ``what`` was being read."""
    try:
        return _RestrictedUnpickler(f, path, load_storage).load()
    except CheckpointFormatError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointFormatError(f"{path}: {what}: {e}") from e
    except Exception as e:
        raise CheckpointFormatError(
            f"{path}: not a torch.save file (reading its {what}: {type(e).__name__}: "
            f"{_first_line(e)})") from e


def _zip_storages(archive: zipfile.ZipFile, prefix: str, path: str
                  ) -> Callable[[str, np.dtype, int], np.ndarray]:
    byteorder_name = prefix + "byteorder"
    big_endian = (byteorder_name in archive.namelist()
                  and archive.read(byteorder_name).strip() == b"big")
    cache: dict[str, np.ndarray] = {}

    def load(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        if key not in cache:
            name = f"{prefix}data/{key}"
            try:
                raw = archive.read(name)
            except KeyError:
                raise CheckpointFormatError(f"{path}: storage record {name} is missing") from None
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointFormatError(
                    f"{path}: storage record {name} holds {len(raw)} bytes, "
                    f"{numel} x {dtype.itemsize} expected")
            array = np.frombuffer(raw, dtype.newbyteorder(">") if big_endian else dtype,
                                  count=numel)
            cache[key] = array.astype(dtype) if big_endian else array
        return cache[key]

    return load


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")
                   and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: a zip file but not a torch.save archive (no single <name>/data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        load = _zip_storages(archive, prefix, path)
        return _unpickle(io.BytesIO(archive.read(pickles[0])), path, load, "object")


def _read_legacy(f: BinaryIO, path: str) -> Any:
    def header(what: str) -> Any:
        return _unpickle(f, path, _no_storage, what)

    if header("magic number") != LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(
            f"{path}: not a torch.save file (neither a zip archive nor a legacy pickle "
            "stream starting with PyTorch's magic number)")
    version = header("protocol version")
    if version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"{path}: legacy protocol version {version!r}, "
                                    f"{LEGACY_PROTOCOL_VERSION} expected")
    sys_info = header("system information")
    little_endian = not isinstance(sys_info, Mapping) or sys_info.get("little_endian", True)
    storages: dict[str, tuple[np.dtype, int, np.ndarray]] = {}

    def declare(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        # Filled in place below, once the storage bytes (which follow the object) are read.
        if key not in storages:
            storages[key] = (dtype, numel, np.empty(numel, dtype))
        return storages[key][2]

    obj = _unpickle(f, path, declare, "object")
    keys = header("storage keys")
    for key in keys:
        key = str(key)
        if key not in storages:
            raise CheckpointFormatError(f"{path}: storage {key} is listed but never used")
        dtype, numel, array = storages[key]
        (count,) = struct.unpack("<q", _read_exactly(f, 8, path, key))
        if count != numel:
            raise CheckpointFormatError(
                f"{path}: storage {key} holds {count} elements, {numel} declared")
        raw = _read_exactly(f, count * dtype.itemsize, path, key)
        array[...] = np.frombuffer(raw, dtype if little_endian else dtype.newbyteorder(">"))
    return obj


def _read_exactly(f: BinaryIO, n: int, path: str, key: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointFormatError(f"{path}: truncated in storage {key}")
    return data


def _no_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    raise CheckpointFormatError(f"storage {key} referenced outside the saved object")


def read_torch_file(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file (zip or legacy format) without PyTorch or running code.

    Args:
      path: the file.
    Returns:
      The saved object with every tensor as a numpy array (float64/32/16, ``ml_dtypes.bfloat16``,
      int64/32/16/8, uint8, bool) of the tensor's shape; containers as saved (dicts,
      ``OrderedDict``, lists, tuples), numbers and strings as they are.
    Raises:
      FileNotFoundError: no such file.
      CheckpointFormatError: not a ``torch.save`` file, a corrupt one, or one that needs a
        Python global other than tensors, storages and plain containers (the error names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            obj = _read_zip(path)
        except zipfile.BadZipFile as e:
            raise CheckpointFormatError(f"{path}: corrupt zip archive ({e})") from e
    else:
        with open(path, "rb") as f:
            obj = _read_legacy(f, path)
    return _own_arrays(obj)


def _own_arrays(obj: Any) -> Any:
    """``obj`` with every array (a view of a storage) replaced by a contiguous copy."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True, order="C")
    if isinstance(obj, dict):  # dict and OrderedDict keep their type
        return type(obj)((k, _own_arrays(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_own_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_own_arrays(v) for v in obj)
    return obj


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except KeyError as e:
        raise CheckpointFormatError(
            f"{path}: tensor dtype {e.args[0]} cannot be read into numpy; save the "
            "safetensors file with float32/float16 tensors") from e
    except Exception as e:
        if isinstance(e, OSError):
            raise
        raise CheckpointFormatError(
            f"{path}: not a valid safetensors file ({type(e).__name__}: {_first_line(e)})") from e


def unwrap_state_dict(obj: Any, path: str = "<checkpoint>") -> Mapping[str, Any]:
    """The flat state_dict inside a loaded checkpoint object.

    Accepts a mapping of key -> tensor, or a mapping whose ``state_dict`` (else ``model``)
    entry is one (training checkpoints that also store epoch, optimiser, ...).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"{path}: holds a {type(obj).__name__}, expected a state_dict (a mapping of "
            "parameter names to tensors)")
    for wrapper in WRAPPER_KEYS:
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            return obj[wrapper]
    return obj


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes ``module.`` from the keys when every key has it (``nn.DataParallel`` saves)."""
    if state_dict and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint file into ``{key: numpy array}`` (PyTorch layouts).

    Args:
      path: a ``torch.save`` file (``read_torch_file``) or a ``.safetensors`` file.
    Returns:
      The flat state_dict, unwrapped from ``{'state_dict': ...}`` and without a
      ``module.`` prefix; bfloat16 tensors become float32, other dtypes are kept.
    Raises:
      FileNotFoundError: no such file.
      CheckpointFormatError: the file is not a plain weights checkpoint (e.g. a pickle that
        would run code, a whole pickled model, or non-tensor entries).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        state = _load_safetensors(path)
    else:
        obj = unwrap_state_dict(read_torch_file(path), path)
        state = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CheckpointFormatError(f"{path}: key {key!r} is not a string")
            if not isinstance(value, np.ndarray):
                raise CheckpointFormatError(
                    f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                    "expected a flat state_dict of tensors")
            state[key] = value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
    if not state:
        raise CheckpointFormatError(f"{path}: the checkpoint holds no tensors")
    return strip_data_parallel_prefix(state)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded as the conversion's source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
