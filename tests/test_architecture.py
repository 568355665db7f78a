"""The code map (docs/architecture.md) names modules that exist, and the layering it states
holds: no lmr_jax package imports a package above it, and nothing in lmr_jax imports scripts,
benchmarks or tests."""

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAP = (REPO / "docs" / "architecture.md").read_text()

# Layer of each top-level lmr_jax module or package (docs/architecture.md, section Layers).
LAYERS = {"registry": 0, "models": 1, "data": 1, "convert": 2, "datasets": 2, "synthetic": 2,
          "retrieval": 3, "train": 4, "doctor": 5, "serving": 5}
OUTSIDE = ("scripts", "benchmarks", "tests")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, function-local imports included; ``from a import b``
    counts as ``a.b`` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in OUTSIDE:
        return parts[0]
    if parts[0] == "lmr_jax" and len(parts) > 1:
        return parts[1]
    return None


def test_every_lmr_jax_module_has_a_layer():
    tops = {p.stem for p in (REPO / "lmr_jax").iterdir()
            if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert tops == set(LAYERS)


@pytest.mark.parametrize("path", sorted((REPO / "lmr_jax").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_upward_import(path):
    rel = path.relative_to(REPO / "lmr_jax").with_suffix("").parts
    if rel == ("__init__",):
        return
    own = rel[0]
    for module in _imports(path):
        target = _package(module)
        if target is None or target == own or target not in LAYERS and target not in OUTSIDE:
            continue
        assert target not in OUTSIDE, f"{path.relative_to(REPO)} imports {module}"
        assert LAYERS[target] < LAYERS[own], (
            f"{path.relative_to(REPO)} (layer {LAYERS[own]}) imports {module} "
            f"(layer {LAYERS[target]})")


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lmr_jax.train import trainer\n")
    assert "lmr_jax.train.trainer" in _imports(bad)


def test_every_path_in_the_map_exists():
    paths = set(re.findall(r"`((?:lmr_jax|benchmarks|scripts|tests|configs|docs)/[\w/.]*)`",
                           MAP))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing
    for name in re.findall(r"`(lmr_jax/[\w/]+\.py)`", MAP):
        assert (REPO / name).is_file(), name


def test_every_module_in_the_map_exists():
    modules = set(re.findall(r"\b(lmr_jax(?:\.\w+)+)", MAP))
    assert modules
    for dotted in modules:  # a module, or a module's attribute (lmr_jax.registry.Registry)
        parts = dotted.split(".")
        n = max(i for i in range(1, len(parts) + 1)
                if REPO.joinpath(*parts[:i]).with_suffix(".py").is_file()
                or (REPO.joinpath(*parts[:i]) / "__init__.py").is_file())
        module = importlib.import_module(".".join(parts[:n]))
        assert n >= len(parts) - 1 and all(hasattr(module, a) for a in parts[n:]), dotted
    # Module names inside table cells: `file.py` next to their package's path.
    for row in re.findall(r"^\| \d+ \| `(lmr_jax/\w+)/` \| (.*) \|$", MAP, flags=re.M):
        package, cell = row
        for name in re.findall(r"`(\w+\.py)`", cell):
            found = list((REPO / package).rglob(name))
            assert found, f"{package}/**/{name}"
