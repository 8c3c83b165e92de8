"""Checks before the heavy imports: a config, data or path mistake fails in seconds.

``fellrec fit|validate|test`` and ``fellrec data stats`` import Lightning, transformers and torch
(6-9 s on 2 cores) and LightningCLI builds its parser from fellrec's classes before a single value
is checked; the model and the data load before the checks that need them. :func:`preflight` runs
first, on light modules only: the config files (exist, YAML, mappings), the keys and kinds of the
``model``, ``data`` and ``loop`` sections (:mod:`~fellrec.preflight.schema`), their ranges
(:mod:`~fellrec.preflight.rules` and the data pipeline's own checks), the data files (read with
the run's own readers unless prepared before), the backbone (a packaged alias, a directory, or a
hub name that can be reached or is cached), the run's directory (writable; a new fit never goes
into another run's) and a ``trainer.strategy`` that would spawn or fork the run's processes. What
it cannot judge is left to the real parser and the run, which check everything again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from fellrec.config_errors import check_config_files
from fellrec.preflight.command_line import read_command_line, section
from fellrec.preflight.resources import check_data, check_model_source, check_run_directory
from fellrec.preflight.schema import load_schema
from fellrec.preflight.settings import check_settings
from fellrec.training.host.process_launch import check_strategy_setting

#: The LightningCLI subcommands checked here.
RUN_SUBCOMMANDS = ("fit", "validate", "test")

__all__ = ["RUN_SUBCOMMANDS", "class_keys", "preflight"]


def class_keys() -> frozenset[str]:
    """The keys whose value names a class: fellrec's (the schema's) and ``trainer.strategy``.

    ``trainer.strategy`` is one so that ``--trainer.strategy.init_args.start_method`` lands
    under the class it belongs to, as LightningCLI reads it.
    """
    return frozenset(load_schema()["classes"]) | {"trainer.strategy"}


def preflight(args: Sequence[str]) -> None:
    """Check a ``fellrec`` command line before anything heavy is imported or loaded.

    Args:
        args: The arguments after ``fellrec`` (e.g. ``["fit", "--config", "x.yaml"]``).

    Raises:
        ConfigError: A config file, key or value that cannot be read (naming the file or flag).
        ValueError: A setting out of range, a spawning or forking ``trainer.strategy``, data that
            does not read, a backbone that is nowhere, or a new fit into another run's directory.
        OSError: A missing data or checkpoint file, or a directory that cannot be written.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return  # a process Lightning started for a run the first process checked
    if args[:1] and args[0] in RUN_SUBCOMMANDS:
        subcommand, rest = args[0], list(args[1:])
    elif list(args[:2]) == ["data", "stats"]:
        subcommand, rest = "data stats", list(args[2:])
    else:
        return
    command = f"fellrec {subcommand}"
    check_config_files(rest)
    read = read_command_line(rest, class_keys())
    if not read.plain:
        return
    if subcommand == "data stats":
        # `data stats` reads the data section only (the others are accepted and ignored).
        check_data(check_settings({"data": read.config.get("data") or {}}, rest, command))
        return
    values = check_settings(read.config, rest, command)
    check_strategy_setting(section(read.config, "trainer").get("strategy"))
    check_run_directory(read.config, subcommand)
    check_model_source(values)
    check_data(values)
