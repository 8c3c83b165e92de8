"""Heavy imports without the garbage collector: it waits during the block, then skips what the
block made; a module already loaded changes nothing."""

from __future__ import annotations

import gc
import sys
import types

import pytest

from fellrec.import_collector import collector_paused, first_import_paused


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


def test_the_collector_is_restored_and_nothing_frozen_when_the_block_raises(collector_restored):
    gc.enable()
    frozen_before = gc.get_freeze_count()
    with pytest.raises(RuntimeError), collector_paused():
        made_inside: list[object] = []
        raise RuntimeError("an import failed")
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen_before
    assert any(o is made_inside for o in gc.get_objects())


def test_a_failed_first_import_freezes_nothing_and_is_paused_again(collector_restored):
    """A worker retries a failed import on its next request: each try pauses, none freezes."""
    gc.enable()
    frozen_before = gc.get_freeze_count()
    for _ in range(2):
        with pytest.raises(ImportError), first_import_paused("fellrec_no_such_module"):
            assert not gc.isenabled()
            import fellrec_no_such_module  # type: ignore[import-not-found]  # noqa: F401
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen_before


def test_a_first_import_runs_with_the_collector_paused(collector_restored, monkeypatch):
    gc.enable()
    monkeypatch.delitem(sys.modules, "fellrec_never_loaded", raising=False)
    with first_import_paused("fellrec_never_loaded"):
        assert not gc.isenabled()
        made_inside: list[object] = []
    assert gc.isenabled()
    assert not any(o is made_inside for o in gc.get_objects())


def test_a_module_already_loaded_leaves_the_collector_alone(collector_restored, monkeypatch):
    """A long-lived process answers many messages: later calls must not freeze its objects."""
    gc.enable()
    monkeypatch.setitem(sys.modules, "fellrec_loaded", types.ModuleType("fellrec_loaded"))
    frozen_before = gc.get_freeze_count()
    with first_import_paused("fellrec_loaded"):
        assert gc.isenabled()
        made_inside: list[object] = []
    assert gc.get_freeze_count() == frozen_before
    assert any(o is made_inside for o in gc.get_objects())
