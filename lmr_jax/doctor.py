"""Checks that lmr-jax runs on this machine and says what is wrong when it does not.

Prints the Python and package versions (jax, jaxlib, the installed JAX plugins, flax, optax,
orbax-checkpoint, grain, numpy), the local devices, the compute dtype training would use
(``precision: auto``), then runs one jitted train step (ArcFace loss, the reference SGD) and one
embedding of a tiny registered model (``resnet_tiny``) on every local device. Exit status 0
when nothing is wrong, 1 otherwise, with each problem on a ``PROBLEM:`` line.

Usage:
  python -m lmr_jax.doctor              # whatever devices JAX finds
  python -m lmr_jax.doctor --expect gpu # a problem unless JAX uses a GPU

JAX is imported only after the versions are printed, so that an installation whose JAX does not
import (e.g. a jaxlib of another release) is still diagnosed.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
import time
import traceback
from collections.abc import Mapping

from absl import app, flags

# The oldest versions lmr-jax is tested with (requirements.txt's lower bounds).
MINIMUM_VERSIONS = {"jax": "0.10.2", "jaxlib": "0.10.2", "flax": "0.12.8", "optax": "0.2.8",
                    "orbax-checkpoint": "0.12.8", "grain": "0.2.18", "numpy": "2.4"}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
# JAX's accelerator plugins; the CUDA/ROCm ones are released with jaxlib and must match it.
JAXLIB_MATCHED_PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
                          "jax-cuda13-pjrt", "jax-rocm6-plugin", "jax-rocm6-pjrt",
                          "jax-rocm7-plugin", "jax-rocm7-pjrt")
OTHER_PLUGINS = ("libtpu", "libtpu-nightly")
INSTALL_HINTS = {
    "gpu": "install JAX for your CUDA (pip install -U \"jax[cuda12]\" or \"jax[cuda13]\"), "
           "then lmr-jax's other requirements without replacing it (docs/installation.md)",
    "tpu": "install JAX for TPU (pip install -U \"jax[tpu]\"), then lmr-jax's other "
           "requirements without replacing it (docs/installation.md)",
}
# The tiny model of the device checks.
MODEL, EMBED_DIM, NUM_CLASSES, IMAGE_SIZE = "resnet_tiny", 16, 4, 32

_EXPECT = flags.DEFINE_enum("expect", None, ("cpu", "gpu", "tpu"),
                            "the platform JAX should use here; a problem if it uses another")


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.12.8"`` -> (0, 12, 8); pre-release and local suffixes are ignored."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:4])


def installed_versions() -> dict[str, str | None]:
    """Distribution name -> installed version (None when absent), packages and plugins."""
    versions = {}
    for name in (*PACKAGES, *JAXLIB_MATCHED_PLUGINS, *OTHER_PLUGINS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def version_problems(versions: Mapping[str, str | None]) -> list[str]:
    """What is wrong with a set of installed versions (``installed_versions()``'s form).

    Missing packages, versions older than ``MINIMUM_VERSIONS``, a jaxlib of another release
    than jax, and CUDA/ROCm plugins of another release than jaxlib (JAX then ignores them and
    falls back to the CPU).
    """
    problems = []
    for name in PACKAGES:
        version = versions.get(name)
        if version is None:
            problems.append(f"{name} is not installed (pip install -r requirements.txt)")
        elif _version_tuple(version) < _version_tuple(MINIMUM_VERSIONS[name]):
            problems.append(f"{name} {version} is too old: lmr-jax needs {name} >= "
                            f"{MINIMUM_VERSIONS[name]} (pip install -U '{name}>="
                            f"{MINIMUM_VERSIONS[name]}')")
    jax_version, jaxlib_version = versions.get("jax"), versions.get("jaxlib")
    if jax_version and jaxlib_version and (_version_tuple(jax_version)[:3]
                                           != _version_tuple(jaxlib_version)[:3]):
        problems.append(f"jax {jax_version} with jaxlib {jaxlib_version}: jax is released and "
                        "tested with the jaxlib of the same version (pip install -U "
                        f"'jaxlib=={jax_version}')")
    for plugin in JAXLIB_MATCHED_PLUGINS:
        version = versions.get(plugin)
        if version and jaxlib_version and (_version_tuple(version)[:3]
                                           != _version_tuple(jaxlib_version)[:3]):
            problems.append(f"{plugin} {version} does not match jaxlib {jaxlib_version}: JAX "
                            f"does not use a plugin of another release (reinstall "
                            f"'{plugin}=={jaxlib_version}' or upgrade jax and jaxlib to "
                            f"{version})")
    return problems


def platform_problems(expect: str | None, platforms: set[str],
                      versions: Mapping[str, str | None]) -> list[str]:
    """A problem when ``expect`` (cpu/gpu/tpu) is not among the platforms JAX uses."""
    if expect is None or expect in platforms:
        return []
    plugins = [f"{n} {v}" for n in (*JAXLIB_MATCHED_PLUGINS, *OTHER_PLUGINS)
               if (v := versions.get(n))]
    found = ", ".join(sorted(platforms)) or "none"
    text = (f"no {expect.upper()} found: JAX uses {found}; installed JAX plugins: "
            f"{', '.join(plugins) or 'none'}")
    if expect in INSTALL_HINTS:
        text += "; " + INSTALL_HINTS[expect]
    return [text]


def check_device(device) -> str:
    """One jitted train step and one embedding of ``MODEL`` on ``device``; a one-line report.

    Raises whatever the computation raises (the caller reports it as a problem).
    """
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lmr_jax import models
    from lmr_jax.models import heads
    from lmr_jax.retrieval.embedding import make_embed_fn
    from lmr_jax.train import distributed, losses, optim, precision
    from lmr_jax.train.state import TrainModule, create_train_state
    from lmr_jax.train.step import make_train_step

    dtype = precision.resolve_dtype("auto", device.platform)
    module = TrainModule(models.create(MODEL, embed_dim=EMBED_DIM, dtype=dtype,
                                       rngs=nnx.Rngs(0)),
                         heads.CosineClassifier(EMBED_DIM, NUM_CLASSES, rngs=nnx.Rngs(1)))
    module.train()
    tx = optim.make_optimizer(steps_per_epoch=10, base_lr=0.01, epochs=1, warmup_epochs=0,
                              weight_decay=5e-4, weight_decay_bias=5e-4)
    mesh = distributed.make_mesh([device])
    graphdef, state = create_train_state(module, tx)
    state = distributed.replicate(state, mesh)
    step = make_train_step(graphdef, losses.LOSSES.build("arcface"), tx, mesh,
                           state_sharding=jax.tree.map(lambda a: a.sharding, state),
                           compute_dtype=dtype, donate=False)
    rng = np.random.default_rng(0)
    batch_size = 4
    images = rng.normal(size=(batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    labels = np.arange(batch_size, dtype=np.int32) % NUM_CLASSES
    batch = jax.device_put({"image": images, "label": labels}, NamedSharding(mesh, P("data")))
    start = time.perf_counter()
    state, metrics = step(state, batch)
    loss, finite = float(metrics["loss"]), bool(metrics["finite"])
    step_s = time.perf_counter() - start
    if not (finite and np.isfinite(loss)):
        raise FloatingPointError(f"the train step's loss or gradients are not finite ({loss})")
    embed = make_embed_fn(nnx.merge(graphdef, state.params, state.rest).model, mesh,
                          compute_dtype=dtype)
    start = time.perf_counter()
    emb = np.asarray(embed(batch["image"]))
    embed_s = time.perf_counter() - start
    if emb.shape != (batch_size, EMBED_DIM) or not np.all(np.isfinite(emb)):
        raise FloatingPointError(f"the embedding has shape {emb.shape} or non-finite values")
    return (f"train step ok (loss {loss:.3f}, {step_s:.1f} s with compilation); "
            f"embedding ok {emb.shape} float32 ({embed_s:.1f} s with compilation)")


def run(expect: str | None = None) -> int:
    """Prints the report; returns the exit status (0: nothing wrong)."""
    print("lmr-jax doctor")
    print(f"python {platform.python_version()} ({sys.executable}), {platform.system()} "
          f"{platform.machine()}")
    versions = installed_versions()
    print("versions:")
    for name in PACKAGES:
        print(f"  {name} {versions[name] or '(not installed)'}")
    plugins = [f"{n} {v}" for n in (*JAXLIB_MATCHED_PLUGINS, *OTHER_PLUGINS)
               if (v := versions[n])]
    print(f"  plugins: {', '.join(plugins) or 'none'}")
    problems = version_problems(versions)
    try:
        import jax
    except Exception as e:  # report any import failure, it is the diagnosis
        problems.append(f"jax does not import: {type(e).__name__}: {e}")
        return _finish(problems)
    devices = jax.local_devices()
    print(f"devices: {len(devices)} local of {jax.device_count()} "
          f"(backend {jax.default_backend()}, process {jax.process_index()} of "
          f"{jax.process_count()})")
    for d in devices:
        print(f"  {d.id}: {d.platform} {d.device_kind}")
    problems += platform_problems(expect, {d.platform for d in devices}, versions)
    try:
        from lmr_jax.train import precision

        for plat in sorted({d.platform for d in devices}):
            dtype = precision.resolve_dtype("auto", plat)
            print(f"compute dtype for training on {plat} (precision auto): "
                  f"{jax.numpy.dtype(dtype).name}")
    except Exception as e:  # flax/optax import failures land here
        problems.append(f"lmr_jax does not import: {type(e).__name__}: {e}")
        return _finish(problems)
    print(f"device checks ({MODEL}, batch 4 of {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"embedding {EMBED_DIM}):")
    for d in devices:
        try:
            print(f"  {d.platform}:{d.id} {check_device(d)}")
        except Exception as e:  # each failure is reported, the other devices still run
            print(f"  {d.platform}:{d.id} FAILED")
            traceback.print_exc()
            problems.append(f"device {d.platform}:{d.id} failed its train step or embedding: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return _finish(problems)


def _finish(problems: list[str]) -> int:
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("nothing wrong found" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    sys.exit(run(_EXPECT.value))


if __name__ == "__main__":
    app.run(main)
