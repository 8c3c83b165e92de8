"""The ``fellrec`` console script: its process defaults reach torch's OpenMP runtime, and the
garbage collector waits while it imports."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from fellrec.console import PROCESS_DEFAULTS, collector_paused, set_process_defaults
from test_cli import cli_environment


def test_defaults_never_override_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_process_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    set_process_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == PROCESS_DEFAULTS["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.fixture
def collector_restored():
    """Leave the collector as the test found it: enabled or not, nothing frozen by the test."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_collector_waits_during_the_imports_and_skips_what_they_made(
    collector_restored, enabled_before
):
    (gc.enable if enabled_before else gc.disable)()
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        made_inside = [[] for _ in range(100)]  # 101 lists the collector tracks
    assert gc.isenabled() is enabled_before
    assert gc.get_freeze_count() >= frozen_before + len(made_inside) + 1
    # frozen on the way out, not before: what the block made is out of the collector's sight
    assert not any(o is made_inside for o in gc.get_objects())


def test_the_collector_is_restored_when_the_block_raises(collector_restored):
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("an import failed")
    assert gc.isenabled()


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
