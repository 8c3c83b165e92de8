"""A Flower run's log: fellrec's own lines in it, plain text in a file, no repeated noise.

fellrec logs through Python's ``logging`` (the ``fellrec`` logger: the clients connecting, one
line per round, where the results went); a ``fellrec`` command prints it, but a Flower process
(the ServerApp of a deployment, whose output ``flwr run --stream`` shows, or a simulation's
driver) has no handler for it. :func:`fellrec_logs_through_flower` passes those records to
Flower's logger, whatever part of fellrec logs them.

Flower colours its level names and Ray colours each actor's prefix and its "[repeated Nx across
cluster]" notes with ANSI codes, which turn a log file (CI, ``nohup``, Slurm) into escape
sequences; every Ray actor is a fresh process that repeats the jsonargparse deprecation warnings
Lightning's CLI triggers (nothing a fellrec user can act on). This module turns both off where
the output is not a terminal, in the driver and in every actor, and leaves Flower's own messages
as they are, except the deprecation of ``run_simulation``
(:func:`without_run_simulation_notice` says why).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Flower's logger name (``flwr.common.logger.LOGGER_NAME``).
FLOWER_LOGGER = "flwr"
#: The start of Flower 1.42's notice that ``run_simulation`` is deprecated.
RUN_SIMULATION_NOTICE = "DEPRECATED FEATURE: The `run_simulation` function is deprecated"


def _is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class _ThroughFlower(logging.Handler):
    """Hands a ``fellrec`` record to Flower's logger, unless the root logger shows it already."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # a configured process (a fellrec command, a test) shows it through the root
        from flwr.common.logger import log

        log(record.levelno, record.getMessage())


def fellrec_logs_through_flower() -> None:
    """Show the ``fellrec`` logger's INFO and above through Flower's logger (idempotent)."""
    own = logging.getLogger("fellrec")
    if not any(isinstance(handler, _ThroughFlower) for handler in own.handlers):
        own.addHandler(_ThroughFlower())
    if own.level == logging.NOTSET or own.level > logging.INFO:
        own.setLevel(logging.INFO)


def plain_flower_logs() -> None:
    """No colour codes from Flower (and Ray's actor prefixes) unless both streams are terminals.

    Call it in every process of a simulation (the driver and each actor); it is idempotent.
    The jsonargparse deprecation warnings are switched off for this process and the processes it
    starts (Ray's actors inherit the environment).
    """
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if _is_terminal():
        return
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    from flwr.common.logger import update_console_handler

    update_console_handler(colored=False)


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def without_run_simulation_notice() -> Iterator[None]:
    """Run Flower's in-Python simulation without its deprecation notice, and without colours.

    Flower 1.42 deprecates ``flwr.simulation.run_simulation`` in favour of ``flwr run`` against a
    SuperLink (``flower-app/`` and the README's deployment section do that); it has no in-Python
    replacement, and ``python -m fellrec.deploy.simulation`` is the one-process way in. Ray prints
    the actors' output in this process, with its "[repeated Nx]" notes always coloured: when the
    output is a file, the streams strip the codes (colorama, which Ray itself uses) until the
    simulation ends.
    """
    plain_flower_logs()
    notice = _DropRecords(RUN_SIMULATION_NOTICE)
    flower = logging.getLogger(FLOWER_LOGGER)
    flower.addFilter(notice)
    stripping = not _is_terminal()
    if stripping:
        import colorama

        colorama.init(strip=True, convert=False)
    try:
        yield
    finally:
        flower.removeFilter(notice)
        if stripping:
            colorama.deinit()
