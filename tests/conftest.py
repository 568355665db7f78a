"""Shared pytest configuration: float32 CPU JAX with deterministic settings, and the order in
which `make test`'s worker processes take the test files."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The longest files, longest first (seconds of one worker on the 2-core AMD machine, 2026-12-07,
# while the other worker ran too). `make test` runs whole files in 2 processes
# (--dist loadfile) in collection order (--no-loadscope-reorder: xdist would otherwise start
# the files with the most tests first, which left these for the end, one of them running alone
# for minutes). Starting them first packs the two processes evenly.
SLOW_FILES = (
    "tests/test_train.py",  # 340 s: 1-device, 8-device and 2-process runs of scripts/train.py
    "tests/test_train_step.py",  # 200 s
    "tests/test_convert_paddle_script.py",  # 160 s: full-size resnet152_vd conversions
    "tests/faults/test_training_faults.py",  # 150 s
    "tests/test_baidu_train.py",  # 130 s: resnet152_vd trained through scripts/train.py
    "tests/test_models_resnest.py",  # 120 s
    "tests/test_infer.py",  # 90 s
)


def pytest_collection_modifyitems(config, items):
    """Moves the tests of SLOW_FILES to the front, in that order (the rest keep theirs)."""
    missing = [p for p in SLOW_FILES if not (config.rootpath / p).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES names missing files: {missing}")
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(SLOW_FILES)))
