"""Every command in the README names scripts, flags and config keys that exist.

The README's bash blocks are parsed; for each ``python scripts/X.py ...`` (or ``python -m module ...``) command the
script must exist, every ``--flag`` must be one the script defines (argparse or absl, by name in its source),
and every ``--config.a.b=value`` override must name a key of the config file given with
``--config``. ``make`` targets must exist in the Makefile. What the commands do is exercised by
the tests of each script and by ``make demo``.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def bash_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def as_script(cmd: list[str]) -> list[str]:
    """``python -m pkg.mod ARGS`` as ``python pkg/mod.py ARGS`` (the module's source file)."""
    if len(cmd) > 2 and cmd[1] == "-m":
        return [cmd[0], cmd[2].replace(".", "/") + ".py", *cmd[3:]]
    return cmd


COMMANDS = bash_commands()
PY_COMMANDS = [as_script(c) for c in COMMANDS if c[0] == "python"]


def script_flags(script: Path) -> set[str]:
    """Flag names a script defines: argparse ``"--name"`` strings and absl ``DEFINE_*("name"``."""
    src = script.read_text()
    names = set(re.findall(r'"--([a-z0-9][a-z0-9_-]*)"', src))
    names |= set(re.findall(r'DEFINE_[a-z_]+\(\s*"([a-z0-9][a-z0-9_-]*)"', src))
    return names


def load_config(path: str):
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("readme_config", REPO / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def test_readme_has_the_quick_start_and_the_walkthrough():
    assert ["make", "demo"] in COMMANDS and ["make", "test"] in COMMANDS
    named = {Path(c[1]).name for c in PY_COMMANDS}
    for script in ("prepare_gldv2.py", "convert_weights.py", "train.py", "extract.py",
                   "eval.py", "recognize.py"):
        assert script in named, script


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for c in COMMANDS:
        if c[0] == "make":
            assert re.search(rf"^{c[1]}:", makefile, flags=re.M), c


@pytest.mark.parametrize("cmd", PY_COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_script_flags_and_config_keys_exist(cmd):
    script = REPO / cmd[1]
    assert script.is_file(), cmd[1]
    known = script_flags(script) | {"config"}
    config = None
    args = cmd[2:]
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, _, value = arg[2:].partition("=")
        if name == "config":
            config = load_config(value or args[i + 1])
        elif name.startswith("config."):
            assert config is not None, f"{arg} before --config"
            node = config
            for key in name.split(".")[1:]:
                assert key in node, f"{cmd[1]}: unknown config key {name}"
                node = node[key]
        else:
            assert name in known, f"{cmd[1]} has no flag --{name}"
