"""Reading torch.save files without PyTorch: every tensor equals torch.load(weights_only=True).

The reference is PyTorch itself: files written by ``torch.save`` here, in the zip format and
in the legacy format (``_use_new_zipfile_serialization=False``), read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmr_jax.convert.pytorch_files import CheckpointFormatError, read_state_dict, read_torch_file

FORMATS = {"zip": True, "legacy": False}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


def _save(obj, path: str, fmt: str) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def _assert_same(ours, ref, where: str = "") -> None:
    """Structures equal, tensors equal in dtype, shape and values (bfloat16 bit for bit)."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach()
        assert isinstance(ours, np.ndarray), where
        assert ours.shape == tuple(ref.shape), where
        if ref.dtype == torch.bfloat16:
            assert str(ours.dtype) == "bfloat16", where
            np.testing.assert_array_equal(ours.view(np.uint16),
                                          ref.view(torch.int16).numpy().view(np.uint16), where)
        else:
            assert ours.dtype == ref.numpy().dtype, where
            np.testing.assert_array_equal(ours, ref.numpy(), where)
        assert ours.flags.c_contiguous and ours.flags.owndata, where
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}.{k}")
    elif isinstance(ref, list | tuple):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == ref and type(ours) is type(ref), where


def _random(dtype: torch.dtype, shape, gen: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -2**40), min(info.max, 2**40), shape, generator=gen,
                         dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_reads_back_equal(tmp_path, fmt):
    gen = torch.Generator().manual_seed(0)
    obj = {str(d).removeprefix("torch."): _random(d, (3, 5), gen) for d in DTYPES}
    obj["scalar"] = torch.tensor(2.5)
    obj["empty"] = torch.zeros(0, 4)
    path = _save(obj, os.path.join(tmp_path, "dtypes.pth"), fmt)
    _assert_same(read_torch_file(path), torch.load(path, weights_only=True))


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_offsets_strides_and_shared_storages(tmp_path, fmt):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, 5, generator=gen)
    obj = collections.OrderedDict(
        base=base,
        transposed=base.transpose(0, 2),            # non-contiguous, shares base's storage
        sliced=base[1:, 2:5, ::2],                  # storage offset and strides
        row=base[3, 1],                             # offset, 1-D
        expanded=torch.randn(1, 3, generator=gen).expand(4, 3),  # stride 0
        channels_last=torch.randn(2, 3, 4, 4, generator=gen).to(
            memory_format=torch.channels_last),
        half_view=base.to(torch.float16)[::2, ::3])
    path = _save(obj, os.path.join(tmp_path, "views.pth"), fmt)
    ours = read_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    # Each returned array owns its data: changing one leaves the tensors it shared a storage with.
    ours["base"][...] = 0
    np.testing.assert_array_equal(ours["transposed"], base.transpose(0, 2).numpy())


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # old files hold them
@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_containers_parameters_and_typed_storages(tmp_path, fmt):
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 2, generator=gen)
    obj = {"state_dict": collections.OrderedDict(
               [("fc.weight", torch.nn.Parameter(weight)), ("fc.bias", torch.zeros(3))]),
           "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3, 2)}},
                         "param_groups": [{"lr": 0.1, "params": [0, 1], "nesterov": False}]},
           "epoch": 7, "arch": "resnet50", "shape": (2, 3), "none": None,
           "typed_storage": torch.arange(4.0, dtype=torch.float64).storage(),  # TypedStorage
           "untyped_storage": torch.arange(5, dtype=torch.uint8).untyped_storage()}
    if fmt == "legacy":  # torch.load itself cannot read an UntypedStorage from a legacy file
        del obj["untyped_storage"]
    path = _save(obj, os.path.join(tmp_path, "nested.pth"), fmt)
    ours, ref = read_torch_file(path), torch.load(path, weights_only=True)
    for name, dtype in (("typed_storage", np.float64), ("untyped_storage", np.uint8)):
        if name not in ref:
            continue
        storage, ref_storage = ours.pop(name), ref.pop(name)
        assert storage.dtype == dtype
        np.testing.assert_array_equal(storage, np.asarray(ref_storage.tolist(), dtype))
    _assert_same(ours, ref)
    # read_state_dict unwraps {'state_dict': ...}: the two tensors.
    state = read_state_dict(path)
    assert list(state) == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(state["fc.weight"], weight.numpy())


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
def test_malicious_reduce_is_refused_naming_the_global(tmp_path, how):
    marker = os.path.join(tmp_path, "pwned")
    payload = {"conv1.weight": torch.zeros(2), "evil": _RunsCode(marker)}
    path = os.path.join(tmp_path, "evil.pth")
    if how == "pickle":  # a plain pickle (its tensors would need torch.storage globals)
        with open(path, "wb") as f:
            pickle.dump({"evil": payload["evil"]}, f)
    else:
        _save(payload, path, how)
    with pytest.raises(CheckpointFormatError,
                       match=r"evil\.pth: not a plain weights checkpoint: it needs the Python "
                             r"global (posix|os)\.system"):
        read_torch_file(path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_pickled_model_is_refused_naming_its_class(tmp_path, fmt):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = _save(model, os.path.join(tmp_path, "model.pth"), fmt)
    with pytest.raises(CheckpointFormatError, match=r"global torch\.nn\.modules\.container\."
                                                    r"Sequential.*save model\.state_dict\(\)"):
        read_state_dict(path)
    with pytest.raises(pickle.UnpicklingError):  # PyTorch's weights_only loader refuses it too
        torch.load(path, weights_only=True)


def test_corrupt_and_foreign_files_are_named(tmp_path):
    good = _save({"w": torch.arange(1000.0)}, os.path.join(tmp_path, "good.pth"), "legacy")
    truncated = os.path.join(tmp_path, "truncated.pth")
    with open(good, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:-100])
    with pytest.raises(CheckpointFormatError, match=r"truncated\.pth: truncated in storage"):
        read_torch_file(truncated)
    text = os.path.join(tmp_path, "notes.pth")
    with open(text, "w") as f:
        f.write("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match=r"notes\.pth: not a torch\.save file"):
        read_torch_file(text)
    with pytest.raises(FileNotFoundError):
        read_torch_file(os.path.join(tmp_path, "absent.pth"))


def test_conversion_runs_where_torch_cannot_be_imported(tmp_path):
    """The conversion path never imports PyTorch: a subprocess with ``import torch`` made to
    fail converts a .pth written by torch.save (legacy format) and a zip-format one."""
    from tests.torch_reference import common
    from tests.torch_reference import resnet as torch_resnet

    ref = common.randomize_(torch_resnet.ResNetReference((1, 1, 1, 1), base=16), 5).eval()
    paths = []
    for fmt in FORMATS:
        paths.append(_save(ref.state_dict(), os.path.join(tmp_path, f"{fmt}.pth"), fmt))
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from lmr_jax.convert.convert import convert_state_dict\n"
        "from lmr_jax.convert.mapping import export_torch_state\n"
        "from lmr_jax.convert.pytorch_files import read_state_dict\n"
        "for i, path in enumerate(sys.argv[1:]):\n"
        "    model = convert_state_dict('resnet_tiny', read_state_dict(path)).model\n"
        "    np.savez(path + '.npz', **export_torch_state(model.base))\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    want = ref.state_dict()
    for path in paths:
        back = np.load(path + ".npz")
        for key, value in want.items():
            if not key.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_library_and_scripts_do_not_import_torch_for_conversion():
    """No module of lmr_jax.convert nor scripts/convert_weights.py imports torch."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = [os.path.join(root, "lmr_jax", "convert", n)
             for n in os.listdir(os.path.join(root, "lmr_jax", "convert")) if n.endswith(".py")]
    files.append(os.path.join(root, "scripts", "convert_weights.py"))
    for path in files:
        with open(path) as f:
            for line in f:
                words = line.split()
                assert not (words[:2] in (["import", "torch"], ["from", "torch"])
                            or line.lstrip().startswith(("import torch", "from torch"))), path
