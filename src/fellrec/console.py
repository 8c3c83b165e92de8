"""The ``fellrec`` console script: the process's defaults and the fast checks, then the command.

Nothing heavy is imported here. Two things must happen before torch loads: its OpenMP runtime
reads ``OMP_WAIT_POLICY`` once, when it loads, and a mistake in a config should fail before the
6-9 s of importing Lightning and transformers (:mod:`fellrec.preflight`).
"""

from __future__ import annotations

import os
import sys

from fellrec.command_errors import report_error
from fellrec.import_collector import collector_paused

#: Set for the process unless the environment sets them. OpenMP threads that spin while they
#: wait (the default, ``ACTIVE``) slow every training step several-fold on a CPU shared with
#: other processes, and cost a dedicated CPU nothing measurable when passive.
PROCESS_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_process_defaults() -> None:
    """Apply :data:`PROCESS_DEFAULTS` where the environment does not say otherwise."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


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
