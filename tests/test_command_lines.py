"""Every command line of the scripts and benchmarks owned here is absl: ``--help`` shows a usage
example and lists every flag the command defines (absl exits with status 1 after the help)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["scripts/prepare_gldv2.py", "scripts/make_demo_data.py", "scripts/demo.py",
           "scripts/train.py"]
BENCHMARKS = ["benchmarks.summary", "benchmarks.throughput", "benchmarks.input_pipeline",
              "benchmarks.rerank", "benchmarks.ann_search", "benchmarks.extraction",
              "benchmarks.xla_cpu_conv", "benchmarks.rerank_approx", "benchmarks.rerank_limits",
              "benchmarks.local_sets"]


def _source(command: str) -> str:
    path = REPO / command if command.endswith(".py") else REPO / (
        command.replace(".", "/") + ".py")
    return path.read_text()


@pytest.mark.parametrize("command", SCRIPTS + BENCHMARKS)
def test_help_lists_the_flags_with_an_example(command):
    argv = [command] if command.endswith(".py") else ["-m", command]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    example = command if command.endswith(".py") else f"-m {command}"
    assert re.search(rf"python3? {re.escape(example)}", out.stdout), out.stdout[:500]
    defined = re.findall(r'DEFINE_[a-z_]+\(\s*"([a-z0-9_]+)"', _source(command))
    assert defined
    for name in defined:
        assert re.search(rf"--(\[no\])?{name}:", out.stdout), name
