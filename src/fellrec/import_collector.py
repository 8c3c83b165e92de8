"""Heavy imports without the cyclic garbage collector's passes over them.

A process that imports Lightning, torch and transformers (the ``fellrec`` console script, a
Flower ClientApp answering a message, a client worker) makes some 560,000 objects the collector
tracks, and their allocations trigger its full passes over everything made so far. Stdlib only:
the console script uses it before anything heavy is loaded.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector during the block, then freeze every object it tracks.

    Importing Lightning, torch and transformers leaves some 560,000 objects for the collector to
    track, and their allocations trigger its full passes over everything made so far: about 1.5
    s of a 7 s start (``import fellrec.cli``: 7.0-7.4 s with the collector, 5.5-5.8 s without,
    on a 2-core EPYC beside another job). After the block, :func:`gc.freeze` moves every tracked
    object (in practice, what the imports made) out of the collector's sight, so the later full
    passes of a run skip them too. Reference counting frees objects as before; the reference
    cycles that became garbage inside the block (about 15,000 objects) are frozen with the rest
    and never freed: ~19 MiB of peak memory on the quickstart, against one more full pass (0.47
    s, measured beside another job) that would free them. What the process made before the
    block is frozen too (little, in a process that starts with the block). A block that raises
    freezes nothing: a failed import is retried later, and its half-made modules are garbage.

    Yields:
        Nothing; the collector is held until the block ends, then restored as it was.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        if was_enabled:
            gc.enable()
        raise
    gc.freeze()
    if was_enabled:
        gc.enable()


@contextmanager
def first_import_paused(module: str) -> Iterator[None]:
    """:func:`collector_paused` around a block that imports ``module``, if it is not loaded yet.

    For imports inside functions that a long-lived process (a client worker, a simulation's
    actor) runs again and again: only the first one loads anything, and freezing at every later
    call would also freeze what the process made since, whose cycles could then never be freed.

    Args:
        module: The dotted name of the module the block imports.

    Yields:
        Nothing; see :func:`collector_paused`.
    """
    if module in sys.modules:
        yield
        return
    with collector_paused():
        yield
