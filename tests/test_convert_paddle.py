"""The Paddle 1.x reader and the Baidu name maps against files written by real Paddle.

Fixtures (tests/data/paddle, written by make_fixtures.py there with paddlepaddle 3.3.1 and
paddleclas 2.6.0): reduced Baidu networks built with Paddle's static layers and saved with
Paddle's save functions (named and ``conv2d_N``-numbered parameters, one file per variable and
combined, float32 and float64, a training directory with Momentum velocities and
``weight_norm``), one variable per dtype, the arrays Paddle held (``.npz``) with a forward
input and Paddle's output, the name/shape lists of the full-size programs, and PaddleClas'
parameter names of InceptionV4 and SENet154_vd.

Full-size ``load_paddle_model`` runs use files written here with ``write_record`` (the
record layout; checked byte for byte against Paddle's own files first).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmr_jax.convert import paddle_format
from lmr_jax.convert.mapping import CheckpointMismatchError
from lmr_jax.convert.paddle import (
    check_paddle_state,
    is_training_only,
    load_paddle_model,
    load_paddle_state,
)
from lmr_jax.convert.paddle_names import ARCH_FAMILIES, inception_v4_names, model_entries
from lmr_jax.models import create_backbone
from lmr_jax.models.baidu_heads import (
    SOFTMAX_V1_HIDDEN,
    SOFTMAX_V2_HIDDEN,
    BaiduClassifierModel,
    BaiduRetrievalModel,
)
from lmr_jax.models.registry import zero_initialised
from lmr_jax.models.resnet_vd import ResNetVd

DATA = pathlib.Path(__file__).resolve().parent / "data" / "paddle"
TOL = 1e-4
TINY = dict(stem_widths=(4, 4, 8), widths=(2, 4, 4, 4))
SE_TINY = dict(stem_widths=(4, 4, 8), widths=(16, 16, 16, 16), expansion=1, groups=4,
               se_reduction=4)


def npz(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def saved_arrays(name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in npz(name).items() if not k.startswith("__")}


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def json_gz(name: str) -> dict:
    with gzip.open(DATA / name, "rt") as f:
        return json.load(f)


# ---- the byte format -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet_vd_named", "resnet_vd_numbered", "se_resnext_vd_named",
                                  "softmax_v2", "dtypes"])
def test_variable_dir_equals_paddle_arrays(name):
    got = paddle_format.read_variable_dir(str(DATA / name))
    want = saved_arrays(name)
    assert_same_arrays(got, want)
    if name == "resnet_vd_numbered":
        assert {a.dtype for a in got.values()} == {np.dtype(np.float64)}


def test_dtypes_are_kept():
    got = paddle_format.read_variable_dir(str(DATA / "dtypes"))
    assert {k: str(v.dtype) for k, v in got.items()} == {
        "v_float16": "float16", "v_float32": "float32", "v_float64": "float64",
        "v_int8": "int8", "v_uint8": "uint8", "v_int32": "int32", "v_int64": "int64",
        "v_scalar_shape": "float32"}


@pytest.mark.parametrize("path,name", [("dtypes.params", "dtypes"),
                                       ("resnet_vd_numbered.pdiparams", "resnet_vd_numbered"),
                                       ("softmax_v1/params", "softmax_v1")])
def test_combined_file_in_sorted_name_order(path, name):
    records = paddle_format.read_combined_records(str(DATA / path))
    want = saved_arrays(name)
    named = paddle_format.name_combined_records(records, list(want), path)
    assert_same_arrays(named, want)
    # Byte-wise sorted, not numeric: batch_norm_10 comes before batch_norm_2.
    if name == "resnet_vd_numbered":
        order = sorted(want)
        assert order.index("batch_norm_10.b_0") < order.index("batch_norm_2.b_0")


def write_record(array: np.ndarray, packed: bool = False, lod: list[bytes] = ()) -> bytes:
    """A LoDTensor record (the layout in lmr_jax/convert/paddle_format.py, written here)."""
    codes = {v: k for k, v in paddle_format.PADDLE_DTYPES.items()}

    def varint(n: int) -> bytes:
        out = bytearray()
        n &= (1 << 64) - 1
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    desc = b"\x08" + varint(codes[array.dtype])
    if packed:
        dims = b"".join(varint(d) for d in array.shape)
        desc += b"\x12" + varint(len(dims)) + dims
    else:
        desc += b"".join(b"\x10" + varint(d) for d in array.shape)
    head = struct.pack("<IQ", 0, len(lod)) + b"".join(struct.pack("<Q", len(x)) + x for x in lod)
    return (head + struct.pack("<Ii", 0, len(desc)) + desc
            + np.ascontiguousarray(array).tobytes())


def test_writer_reproduces_paddle_bytes():
    """The test writer gives Paddle's bytes, so the full-size files below are faithful."""
    for name in ("dtypes", "resnet_vd_named"):
        for key, value in saved_arrays(name).items():
            assert write_record(value) == (DATA / name / key).read_bytes(), key
    records = b"".join(write_record(v) for _, v in sorted(saved_arrays("dtypes").items()))
    assert records == (DATA / "dtypes.params").read_bytes()
    # The example of the format notes: fc_0.w_0 [2048, 512] float32 has this TensorDesc.
    head = write_record(np.zeros((2048, 512), np.float32))[:32]
    assert head[16:20] == struct.pack("<i", 8) and head[20:28] == bytes.fromhex("0805108010108004")


def test_packed_dims_and_lod_levels(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    buf = write_record(a, packed=True, lod=[struct.pack("<QQQ", 0, 1, 2)])
    got, end = paddle_format.read_record(buf, 0, "x")
    assert end == len(buf)
    np.testing.assert_array_equal(got, a)


def test_format_errors_name_the_file(tmp_path):
    good = (DATA / "dtypes" / "v_float32").read_bytes()
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(paddle_format.PaddleFormatError, match=r"short: truncated at byte \d+"):
        paddle_format.read_variable_file(str(tmp_path / "short"))
    (tmp_path / "long").write_bytes(good + good)
    with pytest.raises(paddle_format.PaddleFormatError, match="long: .*bytes after the tensor"):
        paddle_format.read_variable_file(str(tmp_path / "long"))
    (tmp_path / "version").write_bytes(struct.pack("<I", 7) + good[4:])
    with pytest.raises(paddle_format.PaddleFormatError, match="version: LoDTensor version 7"):
        paddle_format.read_variable_file(str(tmp_path / "version"))
    bad_type = bytearray(good)
    bad_type[21] = 99  # the data_type varint
    (tmp_path / "dtype").write_bytes(bytes(bad_type))
    with pytest.raises(paddle_format.PaddleFormatError, match="unsupported data_type 99"):
        paddle_format.read_variable_file(str(tmp_path / "dtype"))
    (tmp_path / "combined").write_bytes(good + good[:10])
    with pytest.raises(paddle_format.PaddleFormatError, match=r"combined \(record 1\)"):
        paddle_format.read_combined_records(str(tmp_path / "combined"))


# ---- name maps against real Paddle and PaddleClas ----------------------------------------------

def abstract_model(arch: str, head: str, num_classes: int = 1000):
    def build():
        backbone = create_backbone(arch, last_stride=2, rngs=nnx.Rngs(0))
        if head == "retrieval":
            return BaiduRetrievalModel(backbone, rngs=nnx.Rngs(0))
        hidden = SOFTMAX_V1_HIDDEN if head == "softmax_v1" else SOFTMAX_V2_HIDDEN
        return BaiduClassifierModel(backbone, num_classes, hidden=hidden, rngs=nnx.Rngs(0))
    return nnx.eval_shape(build)


def paddle_shapes(model, entries) -> dict[str, tuple[int, ...]]:
    """Paddle name -> the Paddle shape the model implies (via check_paddle_state's rule)."""
    from lmr_jax.convert.paddle import _model_shapes, _paddle_shape
    shapes = _model_shapes(model)
    return {e.name: _paddle_shape(e, shapes[e.key]) for e in entries}


FULL = json_gz("full_names.json.gz")
COUNTS = {"resnet152_vd": 787, "resnet200_vd": 1027, "se_resnext152_64x4d_vd": 987,
          "inception_v4": 747}


@pytest.mark.parametrize("key", sorted(FULL))
def test_full_size_name_maps_equal_paddle_programs(key):
    arch, layout, head = key.split("/")
    model = abstract_model(arch, head)
    family, options = ARCH_FAMILIES[arch]
    entries = model_entries(model.base, family, layout=layout, head=head, **options)
    want = {n: tuple(s) for n, s in FULL[key]}
    assert paddle_shapes(model, entries) == want
    if head == "retrieval":
        assert len(entries) == COUNTS[arch]
    if layout == "numbered":  # build order = Paddle's creation order
        convs = [n for n, _ in FULL[key] if n.startswith("conv2d_")]
        assert convs == [e.name for e in entries if e.name.startswith("conv2d_")]


def test_se_resnext_embedding_is_fc_100():
    names = {n for n, _ in FULL["se_resnext152_64x4d_vd/named/retrieval"]}
    assert {"fc_100.w_0", "fc_100.b_0"} <= names and "fc_0.w_0" not in names


PADDLECLAS = json_gz("paddleclas_names.json.gz")


@pytest.mark.parametrize("arch,key,drop", [
    ("inception_v4", "InceptionV4", ("final_fc_weights", "final_fc_offset")),
    ("se_resnext152_64x4d_vd", "SENet154_vd", ("fc6_weights", "fc6_offset"))])
def test_backbone_names_equal_paddleclas(arch, key, drop):
    model = abstract_model(arch, "retrieval")
    family, options = ARCH_FAMILIES[arch]
    entries = model_entries(model.base, family, head="none", **options)
    want = {n: tuple(s) for n, s in PADDLECLAS[key] if n not in drop}  # the ImageNet fc
    assert len(want) == COUNTS[arch] - 2
    assert paddle_shapes(model, entries) == want


def test_inception_stem_names_are_swapped_against_shapes():
    names = dict(inception_v4_names())
    assert names["stem.branch_b.1"] == "inception_stem2_1x7"
    model = abstract_model("inception_v4", "retrieval")
    assert model.base.stem.branch_b[1].conv.kernel.shape[:2] == (7, 1)


# ---- loading the reduced Paddle networks and their forward outputs -----------------------------

def nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.astype(np.float32).transpose(0, 2, 3, 1))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


CASES = {
    # fixture: (reader path, model builder, family, layout, head, options)
    "resnet_vd_named": ("resnet_vd_named",
                        lambda: BaiduRetrievalModel(ResNetVd((1, 1, 2, 1), **TINY,
                                                             rngs=nnx.Rngs(0)),
                                                    embed_dim=6, rngs=nnx.Rngs(0)),
                        "resnet_vd", "named", "retrieval", {"res4_numbered": True}),
    "resnet_vd_numbered": ("resnet_vd_numbered",
                           lambda: BaiduRetrievalModel(ResNetVd((2, 1, 1, 1), **TINY,
                                                                rngs=nnx.Rngs(0)),
                                                       embed_dim=6, rngs=nnx.Rngs(0)),
                           "resnet_vd", "numbered", "retrieval", {}),
    "resnet_vd_numbered_combined": ("resnet_vd_numbered.pdiparams", None, "resnet_vd",
                                    "numbered", "retrieval", {}),
    "se_resnext_vd_named": ("se_resnext_vd_named",
                            lambda: BaiduRetrievalModel(ResNetVd((1, 2, 1, 1), **SE_TINY,
                                                                 rngs=nnx.Rngs(0)),
                                                        embed_dim=6, rngs=nnx.Rngs(0)),
                            "se_resnext_vd", "named", "retrieval", {"first_stage": 4}),
    "softmax_v1": ("softmax_v1/params",
                   lambda: BaiduClassifierModel(ResNetVd((1, 1, 1, 1), **TINY, rngs=nnx.Rngs(0)),
                                                7, hidden=(5,), rngs=nnx.Rngs(0)),
                   "resnet_vd", "named", "softmax_v1", {"res4_numbered": True}),
    "softmax_v2": ("softmax_v2",
                   lambda: BaiduClassifierModel(ResNetVd((1, 1, 1, 1), **TINY, rngs=nnx.Rngs(0)),
                                                7, rngs=nnx.Rngs(0)),
                   "resnet_vd", "named", "softmax_v2", {"res4_numbered": True}),
}
CASES["resnet_vd_numbered_combined"] = (CASES["resnet_vd_numbered_combined"][0],
                                        CASES["resnet_vd_numbered"][1],
                                        *CASES["resnet_vd_numbered_combined"][2:])


def read_case(path: str, entries) -> dict[str, np.ndarray]:
    full = DATA / path
    if full.is_dir():
        return paddle_format.read_variable_dir(str(full))
    records = paddle_format.read_combined_records(str(full))
    return paddle_format.name_combined_records(records, [e.name for e in entries], path)


@pytest.mark.parametrize("case", list(CASES))
def test_reduced_paddle_networks_load_and_match_paddle_output(case):
    path, build, family, layout, head, options = CASES[case]
    fixture = "resnet_vd_numbered" if case.startswith("resnet_vd_numbered") else case
    model = zero_initialised(build)
    entries = model_entries(model.base, family, layout=layout, head=head, **options)
    arrays = read_case(path, entries)
    skipped = load_paddle_state(model, arrays, entries, context=case)
    model.eval()
    if case == "resnet_vd_named":  # a training directory: optimizer state and ArcMargin weight
        assert "weight_norm" in skipped and "learning_rate_0" in skipped
        velocities = [n for n in arrays if n.endswith("_velocity_0")]
        moving = [e for e in entries if e.name.endswith(("_mean", "_variance"))]
        # Every trained parameter has a velocity (BN moving statistics are not trained).
        assert len(velocities) == len(entries) - len(moving) + 1  # + weight_norm
        assert sorted(skipped) == sorted(velocities + ["weight_norm", "learning_rate_0"])
    else:
        assert skipped == []
    data = npz(fixture)
    x = nhwc(data["__input__"])
    out = np.asarray(model.probabilities(x) if head != "retrieval" else model(x))
    want = data["__output__"]
    assert out.shape == want.shape
    assert rel(out, want) < TOL, (case, rel(out, want))
    assert np.abs(want[0] - want[1]).max() > 100 * TOL * np.abs(want).max()


def test_strict_loading_lists_missing_unexpected_and_misshaped(tmp_path):
    path, build, family, layout, head, options = CASES["resnet_vd_named"]
    target = tmp_path / "ckpt"
    shutil.copytree(DATA / path, target)
    (target / "res2a_branch2a_weights").unlink()
    (target / "bn3a_branch2b_mean").unlink()
    shutil.copy(target / "fc_0.b_0", target / "fc_9.b_0")
    shutil.copy(target / "conv1_1_weights", target / "conv1_2_weights")  # wrong shape
    model = zero_initialised(build)
    entries = model_entries(model.base, family, layout=layout, head=head, **options)
    arrays = paddle_format.read_variable_dir(str(target))
    with pytest.raises(CheckpointMismatchError) as err:
        load_paddle_state(model, arrays, entries, context="tiny")
    e = err.value
    assert e.missing == ["res2a_branch2a_weights", "bn3a_branch2b_mean"]
    assert e.unexpected == ["fc_9.b_0"]
    assert e.mismatched == [("conv1_2_weights", (4, 3, 3, 3), (4, 4, 3, 3))]
    assert "2 missing" in str(e) and "1 unexpected" in str(e) and "tiny" in str(e)
    # Nothing was loaded: the model is still all zeros.
    assert not np.any(np.asarray(model.fc.kernel[...]))


def test_training_only_names():
    for name in ("conv1_1_weights_velocity_0", "fc_0.w_0_velocity_0", "weight_norm",
                 "@LR_DECAY_COUNTER@", "learning_rate_0"):
        assert is_training_only(name), name
    for name in ("fc_0.w_0", "bn2a_branch2a_mean", "weight_norm_scale"):
        assert not is_training_only(name), name


# ---- load_paddle_model at full size (files written with write_record) --------------------------

def write_full(arch: str, key: str, target: pathlib.Path, combined: bool, seed: int,
               num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Random float16 tensors with the names/shapes of the real Paddle program ``key``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in FULL[key]:
        if num_classes is not None and name == "fc_1.w_0":
            shape = [shape[0], num_classes]
        if num_classes is not None and name == "fc_1.b_0":
            shape = [num_classes]
        arrays[name] = rng.standard_normal(shape, np.float32).astype(np.float16)
    if combined:
        target.write_bytes(b"".join(write_record(arrays[n]) for n in sorted(arrays)))
    else:
        target.mkdir()
        for name, value in arrays.items():
            (target / name).write_bytes(write_record(value))
    return arrays


def test_load_paddle_model_numbered_directory_with_training_state(tmp_path):
    target = tmp_path / "res152_arcmargin"
    arrays = write_full("resnet152_vd", "resnet152_vd/numbered/retrieval", target, False, 1)
    (target / "conv2d_0.w_0_velocity_0").write_bytes(write_record(arrays["conv2d_0.w_0"]))
    (target / "__model__").write_bytes(b"not a variable")
    loaded = load_paddle_model(str(target), "resnet152_vd")
    assert (loaded.layout, loaded.head, loaded.source) == ("numbered", "retrieval", "directory")
    assert loaded.skipped == ["conv2d_0.w_0_velocity_0"]
    model = loaded.model
    assert isinstance(model, BaiduRetrievalModel)
    np.testing.assert_array_equal(np.asarray(model.base.conv1[0].kernel[...]),
                                  arrays["conv2d_0.w_0"].astype(np.float32).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), arrays["fc_0.w_0"])  # [in, out]
    last = model.base.layer4[2]
    np.testing.assert_array_equal(np.asarray(last.bn3.var[...]), arrays["batch_norm_156.w_2"])
    np.testing.assert_array_equal(np.asarray(model.base.layer2[0].downsample[1].kernel[...])[0, 0],
                                  arrays["conv2d_16.w_0"][:, :, 0, 0].astype(np.float32).T)


def test_load_paddle_model_softmax_v1_reads_the_class_count(tmp_path):
    target = tmp_path / "res152_softmax_v1"
    arrays = write_full("resnet152_vd", "resnet152_vd/named/softmax_v1", target, False, 2,
                        num_classes=11)
    loaded = load_paddle_model(str(target), "resnet152_vd")
    assert (loaded.layout, loaded.head) == ("named", "softmax_v1")
    assert loaded.model.num_classes == 11
    np.testing.assert_array_equal(np.asarray(loaded.model.classifier[1].kernel[...]),
                                  arrays["fc_1.w_0"])
    np.testing.assert_array_equal(np.asarray(loaded.model.base.layer3[35].conv2.kernel[...]),
                                  arrays["res4b35_branch2b_weights"].astype(np.float32)
                                  .transpose(2, 3, 1, 0))


def test_load_paddle_model_combined_inception_v4(tmp_path):
    target = tmp_path / "params"
    arrays = write_full("inception_v4", "inception_v4/named/retrieval", target, True, 3)
    loaded = load_paddle_model(str(target), "inception_v4")
    assert (loaded.layout, loaded.head, loaded.source) == ("named", "retrieval", "combined")
    conv = loaded.model.base.stem.branch_b[1].conv.kernel[...]
    np.testing.assert_array_equal(np.asarray(conv), arrays["inception_stem2_1x7_weights"]
                                  .astype(np.float32).transpose(2, 3, 1, 0))
    # The wrong arch: no layout fits, and the error says what was tried.
    with pytest.raises(CheckpointMismatchError, match="747 records"):
        load_paddle_model(str(target), "resnet152_vd")


def test_check_rejects_a_map_that_does_not_cover_the_model():
    model = nnx.eval_shape(lambda: BaiduRetrievalModel(ResNetVd((1, 1, 1, 1), **TINY,
                                                                rngs=nnx.Rngs(0)),
                                                       embed_dim=6, rngs=nnx.Rngs(0)))
    entries = model_entries(model.base, "resnet_vd", head="retrieval")
    with pytest.raises(ValueError, match="does not cover"):
        check_paddle_state(model, {}, entries[:-1])


def test_integer_weights_are_refused():
    model = zero_initialised(CASES["softmax_v2"][1])
    entries = model_entries(model.base, "resnet_vd", head="softmax_v2")
    arrays = paddle_format.read_variable_dir(str(DATA / "softmax_v2"))
    arrays["fc_0.b_0"] = arrays["fc_0.b_0"].astype(np.int32)
    with pytest.raises(ValueError, match=r"not floating point: fc_0.b_0 \(int32\)"):
        load_paddle_state(model, arrays, entries)
