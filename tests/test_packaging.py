"""Packaging: declared lower bounds, what each tox environment really gets, the ``fellrec`` command.

tox.ini is read through tox itself (``tox config``: inheritance from ``[testenv]`` and
substitutions resolved), and the console script is checked by running its declared target.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

#: The packages whose lowest declared versions ``tox -e min`` installs.
MIN_PINNED = ("lightning", "transformers", "peft", "torchmetrics", "wandb")

#: What every tox environment must set: the tests never reach the network.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}

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


def _tox_environments(workdir: Path) -> configparser.ConfigParser:
    """Every environment of tox.ini's envlist as tox resolves it, one section per environment.

    ``tox config`` applies what reading the file by hand misses: an environment's own keys replace
    the ``[testenv]`` ones they name (a ``set_env`` in ``[testenv:slow]`` would drop the offline
    settings), and ``{...}`` substitutions are expanded. It creates no environment (~1.5 s).
    """
    command = [sys.executable, "-m", "tox", "config", "-c", str(ROOT / "tox.ini")]
    result = subprocess.run(
        [*command, "--workdir", str(workdir), "-k", "set_env", "deps"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(result.stdout)
    return parser


@pytest.fixture(scope="module")
def tox_environments(tmp_path_factory: pytest.TempPathFactory) -> configparser.ConfigParser:
    return _tox_environments(tmp_path_factory.mktemp("tox"))


def test_min_env_installs_the_declared_lower_bounds(
    tox_environments: configparser.ConfigParser,
) -> None:
    setup_cfg = _read_ini("setup.cfg")
    declared = _requirements(_lines(setup_cfg["options"]["install_requires"]))
    assert tox_environments.has_section("testenv:min"), "tox.ini's envlist has no min"
    pinned = _requirements(_lines(tox_environments["testenv:min"]["deps"]))
    pinned.pop("torch", None)  # the torch build (FELLREC_TORCH), not a lower bound

    assert sorted(pinned) == sorted(MIN_PINNED), "[testenv:min] must pin exactly these packages"
    for name in MIN_PINNED:
        assert name in declared, f"setup.cfg install_requires does not declare {name}"
        lower = _lower_bound(declared[name])
        pin = _exact_pin(pinned[name])
        # Compare as versions: `2.5` and `2.5.0` are the same release.
        assert Requirement(f"x=={pin}").specifier.contains(lower), (
            f"{name}: setup.cfg declares >={lower} but tox -e min installs =={pin}"
        )


@pytest.mark.skipif(
    os.environ.get("TOX_ENV_NAME") != "min", reason="checks the environment of tox -e min only"
)
def test_the_min_env_really_runs_the_lowest_versions(
    tox_environments: configparser.ConfigParser,
) -> None:
    """What ``tox -e min`` installed, read from the running interpreter, equals its pins.

    Pinning in ``deps`` is not enough: tox then installs the package's own requirements, and pip
    upgrades a pinned library whenever another requirement needs a newer release of a shared
    dependency (lightning 2.5.0 caps ``packaging`` below 25; the newest tox the dev extra allows
    needs 25 or newer, and pip upgraded lightning rather than take an older tox), so the
    environment would silently test a newer lightning than it claims.
    """
    from importlib.metadata import version

    pinned = _requirements(_lines(tox_environments["testenv:min"]["deps"]))
    for name in MIN_PINNED:
        wanted = _exact_pin(pinned[name])
        installed = version(name)
        assert Requirement(f"x=={wanted}").specifier.contains(installed), (
            f"tox -e min pins {name}=={wanted} but runs {name} {installed}"
        )


def test_every_tox_env_runs_offline(tox_environments: configparser.ConfigParser) -> None:
    environments = tox_environments.sections()
    assert {"testenv:min", "testenv:slow"} <= set(environments), environments
    for section in environments:
        lines = _lines(tox_environments[section]["set_env"])
        settings = dict(line.split("=", 1) for line in lines)
        for name, value in OFFLINE.items():
            assert settings.get(name) == value, f"tox [{section}] runs without {name}={value}"


def test_the_console_script_runs_and_lists_the_subcommands() -> None:
    scripts = _lines(_read_ini("setup.cfg")["options.entry_points"]["console_scripts"])
    targets = dict(re.split(r"\s*=\s*", line, maxsplit=1) for line in scripts)
    assert "fellrec" in targets, f"setup.cfg declares no fellrec console script: {scripts}"
    env = dict(os.environ, **OFFLINE)
    # Also works from a source checkout that is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # What the installed `fellrec` script does: load the declared target and call it.
    script = (
        "import sys; from importlib.metadata import EntryPoint; "
        "sys.argv = ['fellrec', '--help']; "
        f"sys.exit(EntryPoint('fellrec', {targets['fellrec']!r}, 'console_scripts').load()())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
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
