"""Baidu retrieval embedding speed: lmr_jax's resnet152_vd + Baidu head against its PyTorch
reference (tests/torch_reference/baidu.py), same weights, same inputs, one run.

    python -m benchmarks.baidu_embedding --size 448 --batch 2 --repeats 5

Both models get the same random well-conditioned weights (the parity tests' randomisation,
copied into lmr_jax with ``load_torch_state``) and the same NHWC/NCHW float32 batch; the
outputs are compared (max relative error printed) so a fast wrong model cannot pass unseen.
Median images/s of the forward pass after warm-up (lmr_jax: jitted, compilation excluded and
reported; PyTorch: eval, ``torch.no_grad``, channels_last). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
from absl import app, flags

from benchmarks.timing import images_per_second

_ARCH = flags.DEFINE_enum("arch", "resnet152_vd", ["resnet152_vd", "resnet200_vd",
                                                    "se_resnext152_64x4d_vd", "inception_v4"],
                          "Baidu backbone.")
_SIZE = flags.DEFINE_integer("size", 448, "Input side in pixels (square).")
_BATCH = flags.DEFINE_integer("batch", 2, "Images per forward pass.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed passes (median).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed passes before timing.")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from lmr_jax.convert.mapping import load_torch_state
    from lmr_jax.models import create
    from lmr_jax.models.model_config import ModelConfig
    from lmr_jax.models.registry import zero_initialised
    from tests.torch_reference import baidu, common

    loadavg_before = os.getloadavg()
    arch, size, batch = _ARCH.value, _SIZE.value, _BATCH.value
    torch_base = getattr(baidu, arch)()
    features = 1536 if arch == "inception_v4" else 2048
    ref = common.randomize_(baidu.TorchBaiduRetrieval(torch_base, features), 4).eval()
    ref = ref.to(memory_format=torch.channels_last)
    config = ModelConfig(arch=arch, last_stride=2, head="baidu_embedding")
    model = zero_initialised(lambda: create(config, rngs=nnx.Rngs(0)))
    load_torch_state(model, common.numpy_state(ref))
    model.eval()
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))

    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    xj = jnp.asarray(x)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
        memory_format=torch.channels_last)
    t0 = time.perf_counter()
    out_j = np.asarray(fwd(state, xj).block_until_ready())
    compile_s = time.perf_counter() - t0

    def torch_step():
        with torch.no_grad():
            return ref.forward_stages(xt)[1]

    out_t = torch_step().numpy()
    rel = float(np.max(np.abs(out_j - out_t)) / np.max(np.abs(out_t)))
    jax_ips = images_per_second(lambda: fwd(state, xj).block_until_ready(), batch,
                                _REPEATS.value, _WARMUP.value)
    torch_ips = images_per_second(torch_step, batch, _REPEATS.value, _WARMUP.value)
    print(json.dumps({
        "arch": arch, "size": size, "batch": batch, "repeats": _REPEATS.value,
        "lmr_jax_img_per_s": round(jax_ips, 3), "torch_img_per_s": round(torch_ips, 3),
        "ratio": round(jax_ips / torch_ips, 3), "jax_compile_s": round(compile_s, 1),
        "max_rel_error": rel, "jax": jax.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()}, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
