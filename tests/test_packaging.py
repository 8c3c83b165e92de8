"""Packaging metadata: declared lower bounds, the ``min`` tox pins and the ``fellrec`` command."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

#: The packages whose lowest declared versions ``tox -e min`` installs.
MIN_PINNED = ("lightning", "transformers", "peft", "torchmetrics", "wandb")

#: The subcommands ``fellrec --help`` must list.
SUBCOMMANDS = ("fit", "validate", "test", "data stats")


def _read_ini(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    path = ROOT / name
    assert path.is_file(), f"{path} is missing"
    parser.read(path, encoding="utf-8")
    return parser


def _lines(value: str) -> list[str]:
    """The non-empty, non-comment lines of a multi-line ini value."""
    lines = (line.split("#", 1)[0].strip() for line in value.splitlines())
    return [line for line in lines if line]


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    requirements = [Requirement(line) for line in lines]
    return {canonicalize_name(req.name): req for req in requirements}


def _lower_bound(req: Requirement) -> str:
    bounds = [spec.version for spec in req.specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"setup.cfg: '{req}' needs exactly one '>=' lower bound"
    return bounds[0]


def _exact_pin(req: Requirement) -> str:
    pins = [spec.version for spec in req.specifier if spec.operator == "=="]
    assert len(pins) == 1 and len(req.specifier) == 1, f"tox.ini [testenv:min]: pin '{req}' with =="
    return pins[0]


def test_min_env_pins_the_declared_lower_bounds() -> None:
    setup_cfg = _read_ini("setup.cfg")
    declared = _requirements(_lines(setup_cfg["options"]["install_requires"]))
    tox_ini = _read_ini("tox.ini")
    assert tox_ini.has_section("testenv:min"), "tox.ini has no [testenv:min]"
    # `{env:FELLREC_TORCH:torch==2.13.0}` is a tox substitution (the torch build), not a pin.
    deps = [line for line in _lines(tox_ini["testenv:min"]["deps"]) if not line.startswith("{")]
    pinned = _requirements(deps)

    assert sorted(pinned) == sorted(MIN_PINNED), "[testenv:min] must pin exactly these packages"
    for name in MIN_PINNED:
        assert name in declared, f"setup.cfg install_requires does not declare {name}"
        lower = _lower_bound(declared[name])
        pin = _exact_pin(pinned[name])
        # Compare as versions: `2.5` and `2.5.0` are the same release.
        assert Requirement(f"x=={pin}").specifier.contains(lower), (
            f"{name}: setup.cfg declares >={lower} but tox -e min installs =={pin}"
        )


def test_tox_envs_run_offline() -> None:
    setenv = _read_ini("tox.ini")["testenv"]["setenv"]
    settings = dict(re.split(r"\s*=\s*", line, maxsplit=1) for line in _lines(setenv))
    assert settings.get("HF_HUB_OFFLINE") == "1"
    assert settings.get("WANDB_MODE") == "offline"


def test_console_script_is_declared() -> None:
    scripts = _lines(_read_ini("setup.cfg")["options.entry_points"]["console_scripts"])
    targets = dict(re.split(r"\s*=\s*", line, maxsplit=1) for line in scripts)
    assert targets.get("fellrec") == "fellrec.console:main"


def test_help_lists_the_subcommands() -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    # Also works from a source checkout that is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    result = subprocess.run(
        [sys.executable, "-m", "fellrec", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: fellrec" in result.stdout
    listed = {
        match.group(1)
        for match in re.finditer(r"^[ \t]+(\w+(?: \w+)?)[ \t]{2,}\S", result.stdout, flags=re.M)
    }
    for command in SUBCOMMANDS:
        assert command in listed, f"`fellrec --help` does not list '{command}':\n{result.stdout}"


def _quickstart_commands() -> list[str]:
    """The commands of the README's Install and Quickstart code blocks (comments stripped)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install", 1)[1].split("## How a run works", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = (line.split("#", 1)[0].strip() for block in blocks[:2] for line in block.splitlines())
    return [line for line in lines if line]


def test_the_readme_test_command_is_installed_by_the_dev_extra() -> None:
    commands = _quickstart_commands()
    assert any(c.startswith("pip install -e") and "[dev]" in c for c in commands), commands
    test_command = commands[-1].split()[0]
    dev = _requirements(_lines(_read_ini("setup.cfg")["options.extras_require"]["dev"]))
    assert test_command in dev, (
        f"the README's test command '{test_command}' is not installed by the dev extra"
    )


def test_the_readme_says_how_to_install_the_cpu_build_of_torch() -> None:
    assert any("download.pytorch.org/whl/cpu" in c for c in _quickstart_commands())
