"""``python -m lmr_jax.doctor`` on CPU with 2 forced host devices, and its version diagnosis."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import pytest

from lmr_jax import doctor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = {"jax": "0.10.2", "jaxlib": "0.10.2", "flax": "0.12.8", "optax": "0.2.8",
        "orbax-checkpoint": "0.12.8", "grain": "0.2.18", "numpy": "2.4.6"}


def _doctor(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "lmr_jax.doctor", *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=REPO)


def test_doctor_runs_a_step_and_an_embedding_on_each_of_two_cpu_devices():
    """One run told to expect a GPU: every check passes, and the one problem is the GPU."""
    proc = _doctor("--expect", "gpu")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert f"  jax {jax.__version__}\n" in out and "  flax " in out and "  plugins: " in out
    assert "devices: 2 local of 2 (backend cpu" in out
    assert "compute dtype for training on cpu (precision auto): float32" in out
    checks = re.findall(r"^  cpu:(\d) train step ok \(loss [0-9.]+, .*; embedding ok "
                        r"\(4, 16\) float32", out, flags=re.M)
    assert checks == ["0", "1"], out
    problems = re.findall(r"^PROBLEM: (.*)$", out, flags=re.M)
    assert len(problems) == 1 and out.rstrip().endswith("1 problem(s) found"), out
    assert problems[0].startswith("no GPU found: JAX uses cpu; installed JAX plugins: ")
    assert 'jax[cuda12]' in problems[0]


def test_version_problems_are_named():
    assert doctor.version_problems(GOOD) == []
    old_flax = doctor.version_problems({**GOOD, "flax": "0.10.4"})
    assert old_flax == ["flax 0.10.4 is too old: lmr-jax needs flax >= 0.12.8 "
                        "(pip install -U 'flax>=0.12.8')"]
    mismatched = doctor.version_problems({**GOOD, "jaxlib": "0.9.2",
                                          "jax-cuda12-plugin": "0.10.2"})
    assert any(p.startswith("jax 0.10.2 with jaxlib 0.9.2") for p in mismatched)
    assert any(p.startswith("jax-cuda12-plugin 0.10.2 does not match jaxlib 0.9.2")
               for p in mismatched)
    assert doctor.version_problems({**GOOD, "grain": None}) == [
        "grain is not installed (pip install -r requirements.txt)"]
    # A local build suffix (jaxlib 0.10.2+cuda12) is the same release.
    assert doctor.version_problems({**GOOD, "jaxlib": "0.10.2+cuda12",
                                    "jax-cuda12-pjrt": "0.10.2"}) == []


@pytest.mark.parametrize("expect,platforms,problem", [
    ("gpu", {"cpu"}, "no GPU found: JAX uses cpu"),
    ("tpu", {"gpu"}, "no TPU found: JAX uses gpu"),
    ("gpu", {"gpu"}, None),
    (None, {"cpu"}, None),
])
def test_platform_expectation(expect, platforms, problem):
    problems = doctor.platform_problems(expect, platforms, {"libtpu": "0.0.52"})
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem)
        assert "installed JAX plugins: libtpu 0.0.52" in problems[0]
