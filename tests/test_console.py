"""The ``fellrec`` console script: its process defaults reach torch's OpenMP runtime."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fellrec.console import PROCESS_DEFAULTS, set_process_defaults
from test_cli import cli_environment


def test_defaults_never_override_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_process_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    set_process_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == PROCESS_DEFAULTS["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_openmp_runtime_of_a_fellrec_process_waits_passively(tmp_path):
    """libgomp prints what it read when it loaded (``OMP_DISPLAY_ENV=verbose``, ~8 s).

    Its ``OMP_WAIT_POLICY`` line says PASSIVE when the variable is unset too; the spin count
    tells them apart: 0 when passive, 300000 unset (threads spin before they sleep), 3e10 active.
    """
    env = {k: v for k, v in cli_environment().items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "verbose"
    # `fellrec --version` loads no torch; `fit --print_config` loads it (and the whole CLI).
    result = subprocess.run(
        [sys.executable, "-m", "fellrec", "fit", "--print_config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    spin_counts = {
        line.split("=", 1)[1].strip().strip("'")
        for line in result.stderr.splitlines()
        if line.strip().startswith("GOMP_SPINCOUNT")
    }
    if not spin_counts:
        pytest.skip("this torch build's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT shown)")
    assert spin_counts == {"0"}
