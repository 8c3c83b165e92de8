"""The ``fellrec`` console script: the process's defaults and the fast checks, then the command.

Nothing heavy is imported here. Two things must happen before torch loads: its OpenMP runtime
reads ``OMP_WAIT_POLICY`` once, when it loads, and a mistake in a config should fail before the
6-9 s of importing Lightning and transformers (:mod:`fellrec.preflight`).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fellrec.command_errors import report_error

#: Set for the process unless the environment sets them. OpenMP threads that spin while they
#: wait (the default, ``ACTIVE``) slow every training step several-fold on a CPU shared with
#: other processes, and cost a dedicated CPU nothing measurable when passive.
PROCESS_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_process_defaults() -> None:
    """Apply :data:`PROCESS_DEFAULTS` where the environment does not say otherwise."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


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
    s, measured beside another job) that would free them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fellrec`` console script."""
    set_process_defaults()
    args = list(sys.argv[1:] if argv is None else argv)
    from fellrec.preflight import preflight

    try:
        preflight(args)
    except (ValueError, OSError) as error:  # ConfigError and DataFormatError are ValueErrors
        report_error(error)
        raise SystemExit(2) from None
    with collector_paused():
        from fellrec.cli import main as run

    run(argv, checked=True)
