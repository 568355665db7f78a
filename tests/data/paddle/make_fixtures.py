"""Writes the Paddle fixtures of tests/test_convert_paddle.py with real Paddle.

Run once (the fixtures are committed; the tests need no Paddle), from the repository root:

    python3.11 -m venv /work/venvs/paddle
    /work/venvs/paddle/bin/pip install paddlepaddle==3.3.1 paddleclas==2.6.0
    FLAGS_enable_pir_api=0 /work/venvs/paddle/bin/python tests/data/paddle/make_fixtures.py

(paddleclas is optional: without it ``paddleclas_names.json.gz`` is not rewritten.)

The networks are Baidu's GLR2019 static-graph builders transcribed with Paddle's 1.x-style
layers (``paddle.static.nn.conv2d`` / ``batch_norm`` / ``fc``, the legacy program, so
Paddle's own naming rules name the variables), and saved with Paddle's own save functions:

* ``resnet_vd_named/``: a reduced ResNet-vd (blocks 1, 1, 2, 1 at small widths, so res4
  has ``res4a`` and ``res4b1``) with the 6-d retrieval fc, float32, saved with
  ``save_persistables`` after a Momentum optimizer and an ArcMargin-style ``weight_norm``
  were added (so velocities, ``learning_rate_0`` and ``weight_norm`` sit beside the weights,
  as in a training directory);
* ``resnet_vd_numbered/`` and ``resnet_vd_numbered.pdiparams``: the same family, nothing named
  (``conv2d_N`` / ``batch_norm_N``, blocks 2, 1, 1, 1), float64, saved with
  ``save_persistables`` and as an inference model's combined params file;
* ``se_resnext_vd_named/``: a reduced SE-ResNeXt-vd (blocks 1, 2, 1, 1, 4 groups, SE
  reduction 4; the embedding fc is ``fc_10`` after the 10 SE fcs), float32;
* ``softmax_v1/`` (``model`` + ``params``, an inference model as Paddle 1.x named its files)
  and ``softmax_v2/`` (one file per variable): reduced named ResNet-vd classifiers, 7 classes;
* ``dtypes/`` and ``dtypes.params``: one variable per dtype (float16/32/64, int8/32/64, uint8)
  saved with ``save_vars`` per file and combined;
* ``*.npz``: the arrays Paddle held when it saved (read back from its scope), the forward input
  (``__input__``, batch 2, float16 values, fed in the model's dtype) and Paddle's output
  (``__output__``) of the reduced networks;
* ``ops.npz``: Paddle's outputs of single layers on an odd-sized input (asymmetric padded
  conv, unpadded strided conv, BN + ReLU, exclusive and ceil-mode average pools, max pool);
* ``full_names.json.gz``: name and shape of every persistable of the full-size programs
  (ResNet-152/200-vd named, ResNet-152-vd numbered, SE-ResNeXt-152-vd, Inception-v4 with the
  512-d fc; ResNet-152-vd softmax v1 / v2 with 1000 classes), built but not run or saved;
* ``paddleclas_names.json.gz``: parameter names and shapes of PaddleClas' dygraph InceptionV4 and
  SENet154_vd (a second oracle for the name maps).
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil

os.environ.setdefault("FLAGS_enable_pir_api", "0")

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed.io as dist_io  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent
paddle.enable_static()


# ---- Baidu's builders (static graph) -----------------------------------------------------------

def legacy_op(op_type, inputs, attrs=None):
    """Appends one operator to the legacy program (for ops whose Paddle 3.3 Python API has no
    legacy-graph path, e.g. elementwise_mul / matmul_v2) and returns its output."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    first = next(iter(inputs.values()))
    out = helper.create_variable_for_type_inference(dtype=first.dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": out}, attrs=attrs or {})
    return out


def conv_bn(x, filters, k, stride=1, groups=1, act=None, name=None, bn_name=None, padding=None):
    """conv2d (no bias) -> batch_norm (eps 1e-5, fused act), named as Baidu's helpers do."""
    if padding is None:
        padding = (k - 1) // 2
    conv = paddle.static.nn.conv2d(
        x, filters, k, stride=stride, padding=padding, groups=groups,
        param_attr=paddle.ParamAttr(name=name + "_weights") if name else None, bias_attr=False)
    if name is None:
        return paddle.static.nn.batch_norm(conv, act=act, epsilon=1e-5)
    return paddle.static.nn.batch_norm(
        conv, act=act, epsilon=1e-5, param_attr=paddle.ParamAttr(name=bn_name + "_scale"),
        bias_attr=paddle.ParamAttr(name=bn_name + "_offset"),
        moving_mean_name=bn_name + "_mean", moving_variance_name=bn_name + "_variance")


def resnet_conv_bn(x, filters, k, stride=1, act=None, name=None):
    bn_name = None if name is None else "bn" + name[3:]
    return conv_bn(x, filters, k, stride, act=act, name=name, bn_name=bn_name)


def vd_pool(x):
    return F.avg_pool2d(x, 2, 2, 0, ceil_mode=True, exclusive=True)


def resnet_vd(x, blocks, stem, widths, named, res4_numbered=True):
    """ResNet-vd backbone: stem 3x3 x3, max pool, bottlenecks (expansion 4)."""
    def nm(s):
        return s if named else None

    y = resnet_conv_bn(x, stem[0], 3, 2, "relu", nm("conv1_1"))
    y = resnet_conv_bn(y, stem[1], 3, 1, "relu", nm("conv1_2"))
    y = resnet_conv_bn(y, stem[2], 3, 1, "relu", nm("conv1_3"))
    y = F.max_pool2d(y, 3, 2, 1)
    for block, depth in enumerate(blocks):
        for i in range(depth):
            if res4_numbered and block == 2:
                name = "res4a" if i == 0 else f"res4b{i}"
            else:
                name = f"res{block + 2}{chr(97 + i)}"
            stride = 2 if i == 0 and block != 0 else 1
            f = widths[block]
            c0 = resnet_conv_bn(y, f, 1, 1, "relu", nm(name + "_branch2a"))
            c1 = resnet_conv_bn(c0, f, 3, stride, "relu", nm(name + "_branch2b"))
            c2 = resnet_conv_bn(c1, f * 4, 1, 1, None, nm(name + "_branch2c"))
            if y.shape[1] != f * 4 or stride != 1:
                src = y if (block == 0 and i == 0) else vd_pool(y)
                short = resnet_conv_bn(src, f * 4, 1, 1, None, nm(name + "_branch1"))
            else:
                short = y
            y = F.relu(paddle.add(short, c2))
    return y


def se_resnext_vd(x, blocks, stem, widths, groups, reduction, first_stage=4):
    """SE-ResNeXt-vd backbone (no expansion, SE with biases, first blocks always project)."""
    def cbn(t, f, k, s=1, g=1, act=None, name=None):
        return conv_bn(t, f, k, s, g, act, name, name + "_bn")

    y = cbn(x, stem[0], 3, 2, act="relu", name="conv1_1")
    y = cbn(y, stem[1], 3, 1, act="relu", name="conv1_2")
    y = cbn(y, stem[2], 3, 1, act="relu", name="conv1_3")
    y = F.max_pool2d(y, 3, 2, 1)
    for block, depth in enumerate(blocks):
        n = block + first_stage
        for i in range(depth):
            name = f"{n}_{i + 1}"
            stride = 2 if i == 0 and block != 0 else 1
            f = widths[block]
            c0 = cbn(y, f, 1, act="relu", name=f"conv{name}_x1")
            c1 = cbn(c0, f, 3, stride, groups, "relu", f"conv{name}_x2")
            c2 = cbn(c1, f, 1, name=f"conv{name}_x3")
            pool = F.adaptive_avg_pool2d(c2, 1)
            sq = paddle.static.nn.fc(
                pool, int(f / reduction), activation="relu",
                weight_attr=paddle.ParamAttr(name=f"fc{name}_sqz_weights"),
                bias_attr=paddle.ParamAttr(name=f"fc{name}_sqz_offset"))
            ex = paddle.static.nn.fc(
                sq, f, activation="sigmoid",
                weight_attr=paddle.ParamAttr(name=f"fc{name}_exc_weights"),
                bias_attr=paddle.ParamAttr(name=f"fc{name}_exc_offset"))
            # Paddle 1.x: fluid.layers.elementwise_mul(x=c2, y=ex, axis=0).
            scaled = legacy_op("elementwise_mul", {"X": c2, "Y": ex}, {"axis": 0})
            if i == 0:
                src = y if block == 0 else vd_pool(y)
                short = cbn(src, f, 1, name=f"conv{name}_prj")
            else:
                short = y
            y = F.relu(paddle.add(short, scaled))
    return y


def inception_v4(x):
    """Inception-v4 backbone with Paddle's padding (valid unless stated) and branch order."""
    def c(t, f, k, s=1, p=0, name=None):
        return conv_bn(t, f, k, s, act="relu", name=name, bn_name=name + "_bn", padding=p)

    def avg(t):
        return F.avg_pool2d(t, 3, 1, 1, exclusive=True)

    def mx(t):
        return F.max_pool2d(t, 3, 2, 0)

    y = c(x, 32, 3, 2, name="conv1_3x3_s2")
    y = c(y, 32, 3, name="conv2_3x3_s1")
    y = c(y, 64, 3, p=1, name="conv3_3x3_s1")
    y = paddle.concat([mx(y), c(y, 96, 3, 2, name="inception_stem1_3x3_s2")], 1)
    a = c(c(y, 64, 1, name="inception_stem2_3x3_reduce"), 96, 3, name="inception_stem2_3x3")
    b = c(y, 64, 1, name="inception_stem2_1x7_reduce")
    b = c(b, 64, (7, 1), p=(3, 0), name="inception_stem2_1x7")
    b = c(b, 64, (1, 7), p=(0, 3), name="inception_stem2_7x1")
    b = c(b, 96, 3, name="inception_stem2_3x3_2")
    y = paddle.concat([a, b], 1)
    y = paddle.concat([c(y, 192, 3, 2, name="inception_stem3_3x3_s2"), mx(y)], 1)
    for k in range(1, 5):
        n = f"inception_a{k}"
        y = paddle.concat([
            c(avg(y), 96, 1, name=n + "_1x1"), c(y, 96, 1, name=n + "_1x1_2"),
            c(c(y, 64, 1, name=n + "_3x3_reduce"), 96, 3, p=1, name=n + "_3x3"),
            c(c(c(y, 64, 1, name=n + "_3x3_2_reduce"), 96, 3, p=1, name=n + "_3x3_2"), 96, 3,
              p=1, name=n + "_3x3_3")], 1)
    n = "reduction_a"
    y = paddle.concat([
        mx(y), c(y, 384, 3, 2, name=n + "_3x3"),
        c(c(c(y, 192, 1, name=n + "_3x3_2_reduce"), 224, 3, p=1, name=n + "_3x3_2"), 256, 3,
          2, name=n + "_3x3_3")], 1)
    h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    for k in range(1, 8):
        n = f"inception_b{k}"
        b3 = c(c(c(y, 192, 1, name=n + "_1x7_reduce"), 224, h[0], p=h[1], name=n + "_1x7"),
               256, v[0], p=v[1], name=n + "_7x1")
        b4 = c(y, 192, 1, name=n + "_7x1_2_reduce")
        b4 = c(b4, 192, h[0], p=h[1], name=n + "_1x7_2")
        b4 = c(b4, 224, v[0], p=v[1], name=n + "_7x1_2")
        b4 = c(b4, 224, h[0], p=h[1], name=n + "_1x7_3")
        b4 = c(b4, 256, v[0], p=v[1], name=n + "_7x1_3")
        y = paddle.concat([c(avg(y), 128, 1, name=n + "_1x1"), c(y, 384, 1, name=n + "_1x1_2"),
                           b3, b4], 1)
    n = "reduction_b"
    b2 = c(c(y, 192, 1, name=n + "_3x3_reduce"), 192, 3, 2, name=n + "_3x3")
    b3 = c(y, 256, 1, name=n + "_1x7_reduce")
    b3 = c(b3, 256, h[0], p=h[1], name=n + "_1x7")
    b3 = c(b3, 320, v[0], p=v[1], name=n + "_7x1")
    b3 = c(b3, 320, 3, 2, name=n + "_3x3_2")
    y = paddle.concat([mx(y), b2, b3], 1)
    r, q = ((1, 3), (0, 1)), ((3, 1), (1, 0))
    for k in range(1, 4):
        n = f"inception_c{k}"
        b3 = c(y, 384, 1, name=n + "_1x1_3")
        b4 = c(y, 384, 1, name=n + "_1x1_4")
        b4 = c(b4, 448, r[0], p=r[1], name=n + "_1x3_2")
        b4 = c(b4, 512, q[0], p=q[1], name=n + "_3x1_2")
        y = paddle.concat([
            c(avg(y), 256, 1, name=n + "_1x1"), c(y, 256, 1, name=n + "_1x1_2"),
            c(b3, 256, r[0], p=r[1], name=n + "_1x3"), c(b3, 256, q[0], p=q[1], name=n + "_3x1"),
            c(b4, 256, r[0], p=r[1], name=n + "_1x3_3"),
            c(b4, 256, q[0], p=q[1], name=n + "_3x1_3")], 1)
    return y


def head(y, kind, embed=512, classes=1000, hidden=256):
    """Baidu's heads: global average pool -> unnamed fc(s); softmax for the classifiers."""
    pool = F.adaptive_avg_pool2d(y, 1)
    if kind == "retrieval":
        return paddle.static.nn.fc(pool, embed)
    if kind == "softmax_v1":
        return F.softmax(paddle.static.nn.fc(paddle.static.nn.fc(pool, hidden), classes))
    return F.softmax(paddle.static.nn.fc(pool, classes))


# ---- programs, weights, saving ------------------------------------------------------------------

def build(fn, shape, dtype="float32", train=False):
    """(main program, inference clone, startup program, input var, output var) of fn(input)
    in a fresh name scope (counters from 0, as Baidu's scripts had them). With ``train`` an
    ArcMargin-style ``weight_norm`` parameter and a Momentum optimizer are added, so the
    program also holds training state (velocities, ``learning_rate_0``)."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("image", [None, *shape], dtype)
        out = fn(x)
        test = main.clone(for_test=True)
        if train:
            w = paddle.static.create_parameter([3, out.shape[1]], dtype,
                                               attr=paddle.ParamAttr(name="weight_norm"))
            logits = legacy_op("matmul_v2", {"X": out, "Y": w}, {"trans_x": False, "trans_y": True})
            loss = paddle.mean(logits)
            paddle.optimizer.Momentum(0.01, 0.9).minimize(loss)
    return main, test, startup, x, out


def persistables(program):
    return [v for v in program.list_vars()
            if v.persistable and v.name not in ("feed", "fetch", "image")]


def randomise(program, scope, rng):
    """Well-conditioned random values for every persistable in ``scope`` (in place).

    Convs He-normal, fcs N(0, 1/fan_in), BN moving mean U(-0.2, 0.2), variance U(0.5, 1.5),
    scale U(0.5, 1.5) (U(0.1, 0.4) on the last BN of a residual branch), offsets and biases
    U(-0.2, 0.2). Training state gets values too (so that it is not all zeros on disk).
    """
    place = paddle.CPUPlace()
    for v in persistables(program):
        t = scope.find_var(v.name).get_tensor()
        shape = tuple(t.shape())
        dtype = np.array(t).dtype
        name = v.name
        if len(shape) == 4:  # conv OIHW: He normal
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif len(shape) == 2:  # fc [in, out]
            a = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name.endswith(("_mean", ".w_1")):
            a = rng.uniform(-0.2, 0.2, shape)
        elif name.endswith(("_variance", ".w_2")):
            a = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_scale", ".w_0")):
            last = "_branch2c_" in name or "_x3_bn_" in name
            a = rng.uniform(0.1, 0.4, shape) if last else rng.uniform(0.5, 1.5, shape)
        else:  # BN offsets, fc biases, learning rate
            a = rng.uniform(-0.2, 0.2, shape)
        t.set(a.astype(dtype), place)


def scope_arrays(program, scope):
    return {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in persistables(program)}


def make_model_fixture(name, fn, shape, *, dtype="float32", train=False, combined=None,
                       inference_dir=False, seed=0):
    rng = np.random.default_rng(seed)
    main, test, startup, x, out = build(fn, shape, dtype, train)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        randomise(main, scope, rng)
        # Inputs on the float16 grid, stored as float16 (half the bytes, exact in any dtype).
        inp = rng.standard_normal((2, *shape)).astype(np.float16)
        (result,) = exe.run(test, feed={"image": inp.astype(dtype)}, fetch_list=[out])
        arrays = scope_arrays(main, scope)
        target = OUT / name
        shutil.rmtree(target, ignore_errors=True)
        if inference_dir:
            paddle.static.save_inference_model(str(target / "model"), [x], [out], exe,
                                               program=test)
            (target / "model.pdmodel").rename(target / "model")
            (target / "model.pdiparams").rename(target / "params")
        else:
            dist_io.save_persistables(exe, str(target), main)
        if combined:
            tmp = OUT / "_tmp_inference"
            paddle.static.save_inference_model(str(tmp / "m"), [x], [out], exe, program=test)
            shutil.move(str(tmp / "m.pdiparams"), OUT / combined)
            shutil.rmtree(tmp)
    np.savez_compressed(OUT / f"{name}.npz", __input__=inp, __output__=np.asarray(result),
                        **arrays)
    print(name, len(arrays), "variables", sorted({str(a.dtype) for a in arrays.values()}))


def make_dtype_fixture():
    rng = np.random.default_rng(7)
    values = {
        "v_float16": rng.standard_normal((3, 5)).astype(np.float16),
        "v_float32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "v_float64": rng.standard_normal((4,)).astype(np.float64),
        "v_int8": rng.integers(-128, 127, (6,)).astype(np.int8),
        "v_uint8": rng.integers(0, 255, (2, 2)).astype(np.uint8),
        "v_int32": rng.integers(-2**31, 2**31 - 1, (3,)).astype(np.int32),
        "v_int64": rng.integers(-2**62, 2**62, (2, 1, 2)).astype(np.int64),
        "v_scalar_shape": np.asarray([1.5], np.float32),
    }
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        made = [paddle.static.create_global_var(list(a.shape), 0, str(a.dtype), persistable=True,
                                                name=n) for n, a in values.items()]
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        for n, a in values.items():
            scope.find_var(n).get_tensor().set(a, paddle.CPUPlace())
        shutil.rmtree(OUT / "dtypes", ignore_errors=True)
        paddle.static.io.save_vars(exe, str(OUT / "dtypes"), main, vars=made)
        paddle.static.io.save_vars(exe, str(OUT / "_tmp_dtypes"), main, vars=made,
                                   filename="params")
        shutil.move(str(OUT / "_tmp_dtypes" / "params"), OUT / "dtypes.params")
        shutil.rmtree(OUT / "_tmp_dtypes")
        saved = {n: np.array(scope.find_var(n).get_tensor()) for n in values}
    np.savez_compressed(OUT / "dtypes.npz", **saved)
    print("dtypes", {n: str(a.dtype) for n, a in saved.items()})


def write_json_gz(path, table):
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write((json.dumps(table, separators=(",", ":")) + "\n").encode())


def make_ops_fixture():
    """The layer semantics the Inception-v4 and vd ports rely on, on an odd-sized input:
    a (1, 7) conv padded (0, 3), an unpadded 3x3/2 conv, BN + ReLU, the exclusive 3x3/1/1
    average pool, the unpadded 3x3/2 max pool and the ceil-mode exclusive 2x2/2 average pool."""
    rng = np.random.default_rng(8)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("image", [None, 4, 9, 11], "float32")
        outs = {
            "conv_1x7": paddle.static.nn.conv2d(
                x, 5, (1, 7), padding=(0, 3), bias_attr=False,
                param_attr=paddle.ParamAttr(name="conv_1x7_weights")),
            "conv_3x3_s2": paddle.static.nn.conv2d(
                x, 3, 3, stride=2, padding=0, bias_attr=False,
                param_attr=paddle.ParamAttr(name="conv_3x3_s2_weights")),
            "avg_3x3_exclusive": F.avg_pool2d(x, 3, 1, 1, exclusive=True),
            "max_3x3_s2": F.max_pool2d(x, 3, 2, 0),
            "avg_2x2_ceil_exclusive": F.avg_pool2d(x, 2, 2, 0, ceil_mode=True, exclusive=True),
        }
        outs["bn_relu"] = paddle.static.nn.batch_norm(
            outs["conv_1x7"], act="relu", epsilon=1e-5, is_test=True,
            param_attr=paddle.ParamAttr(name="bn_scale"),
            bias_attr=paddle.ParamAttr(name="bn_offset"), moving_mean_name="bn_mean",
            moving_variance_name="bn_variance")
        test = main.clone(for_test=True)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        randomise(main, scope, rng)
        inp = rng.standard_normal((2, 4, 9, 11)).astype(np.float16)
        names = list(outs)
        results = exe.run(test, feed={"image": inp.astype(np.float32)},
                          fetch_list=[outs[n] for n in names])
        arrays = scope_arrays(main, scope)
    np.savez_compressed(OUT / "ops.npz", __input__=inp, **arrays,
                        **{f"__{n}__": np.asarray(r) for n, r in zip(names, results, strict=True)})
    print("ops", {n: np.asarray(r).shape for n, r in zip(names, results, strict=True)})


def full_names():
    programs = {
        "resnet152_vd/named/retrieval": (lambda x: head(resnet_vd(
            x, (3, 8, 36, 3), (32, 32, 64), (64, 128, 256, 512), True), "retrieval"), 448),
        "resnet152_vd/numbered/retrieval": (lambda x: head(resnet_vd(
            x, (3, 8, 36, 3), (32, 32, 64), (64, 128, 256, 512), False), "retrieval"), 448),
        "resnet200_vd/named/retrieval": (lambda x: head(resnet_vd(
            x, (3, 12, 48, 3), (32, 32, 64), (64, 128, 256, 512), True), "retrieval"), 448),
        "resnet152_vd/named/softmax_v1": (lambda x: head(resnet_vd(
            x, (3, 8, 36, 3), (32, 32, 64), (64, 128, 256, 512), True), "softmax_v1"), 224),
        "resnet152_vd/named/softmax_v2": (lambda x: head(resnet_vd(
            x, (3, 8, 36, 3), (32, 32, 64), (64, 128, 256, 512), True), "softmax_v2"), 224),
        "se_resnext152_64x4d_vd/named/retrieval": (lambda x: head(se_resnext_vd(
            x, (3, 8, 36, 3), (64, 64, 128), (256, 512, 1024, 2048), 64, 16), "retrieval"), 448),
        "inception_v4/named/retrieval": (lambda x: head(inception_v4(x), "retrieval"), 555),
    }
    table = {}
    for key, (fn, size) in programs.items():
        main = build(fn, (3, size, size))[0]
        table[key] = [[v.name, list(v.shape)] for v in persistables(main)]
        print(key, len(table[key]))
    write_json_gz(OUT / "full_names.json.gz", table)


def paddleclas_names():
    try:
        from paddleclas.ppcls.arch.backbone.model_zoo.inception_v4 import InceptionV4
        from paddleclas.ppcls.arch.backbone.model_zoo.se_resnext_vd import SENet154_vd
    except ImportError as e:
        print("paddleclas not importable, paddleclas_names.json.gz left as it is:", e)
        return
    paddle.disable_static()
    table = {}
    for key, cls in (("InceptionV4", InceptionV4), ("SENet154_vd", SENet154_vd)):
        model = cls()
        table[key] = [[p.name, list(p.shape)] for p in model.parameters()]
        print("paddleclas", key, len(table[key]))
        del model
    paddle.enable_static()
    write_json_gz(OUT / "paddleclas_names.json.gz", table)


TINY_STEM, TINY_WIDTHS = (4, 4, 8), (2, 4, 4, 4)
SE_STEM, SE_WIDTHS = (4, 4, 8), (16, 16, 16, 16)


def main():
    make_model_fixture(
        "resnet_vd_named", lambda x: head(resnet_vd(x, (1, 1, 2, 1), TINY_STEM, TINY_WIDTHS, True),
                                          "retrieval", embed=6),
        (3, 32, 64), train=True, seed=1)
    make_model_fixture(
        "resnet_vd_numbered", lambda x: head(resnet_vd(x, (2, 1, 1, 1), TINY_STEM, TINY_WIDTHS,
                                                       False), "retrieval", embed=6),
        (3, 32, 32), dtype="float64", combined="resnet_vd_numbered.pdiparams", seed=2)
    make_model_fixture(
        "se_resnext_vd_named", lambda x: head(se_resnext_vd(x, (1, 2, 1, 1), SE_STEM, SE_WIDTHS,
                                                            4, 4), "retrieval", embed=6),
        (3, 32, 64), seed=3)
    make_model_fixture(
        "softmax_v1", lambda x: head(resnet_vd(x, (1, 1, 1, 1), TINY_STEM, TINY_WIDTHS, True),
                                     "softmax_v1", classes=7, hidden=5),
        (3, 32, 32), inference_dir=True, seed=4)
    make_model_fixture(
        "softmax_v2", lambda x: head(resnet_vd(x, (1, 1, 1, 1), TINY_STEM, TINY_WIDTHS, True),
                                     "softmax_v2", classes=7),
        (3, 32, 32), seed=5)
    make_dtype_fixture()
    make_ops_fixture()
    full_names()
    paddleclas_names()


if __name__ == "__main__":
    main()
