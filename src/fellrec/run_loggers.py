"""Which directory a run's loggers write into: the run's own, whatever a saved config says.

Every run writes ``metrics.csv`` through :data:`RUN_CSV_LOGGER`, and its record (``results.json``,
plots) goes where Lightning's first logger writes. A run's saved ``config.yaml`` names the
directories of the run that saved it; a new run read from that file must write into its own
(:func:`into_run_directory`). Light on purpose: the loggers are settings here, not objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from fellrec.run_directory import holds_run_record

#: The logger that writes a run's ``metrics.csv`` (and ``hparams.yaml``) and keeps it on resume.
RUN_CSV_LOGGER = "fellrec.training.records.run_logger.RunCSVLogger"


def with_run_csv_logger(logger: Any, log_dir: str) -> Any:
    """The ``trainer.logger`` setting with a :data:`RUN_CSV_LOGGER` writing into ``log_dir``.

    Unset (or ``true``): that logger alone. Others (e.g. a ``WandbLogger``): they come first and
    the CSV logger is added unless a CSV logger is already among them, so every run writes its
    ``metrics.csv`` and ``hparams.yaml``. ``false`` (no logging at all) is left as it is.
    """
    csv_logger = Namespace(
        class_path=RUN_CSV_LOGGER,
        init_args=Namespace(save_dir=log_dir, name="", version=""),
    )
    if logger is None or logger is True:
        return csv_logger
    if logger is False:
        return logger
    loggers = list(logger) if isinstance(logger, list | tuple) else [logger]
    if any(str(getattr(item, "class_path", "")).endswith("CSVLogger") for item in loggers):
        return logger
    return [*loggers, csv_logger]


def into_run_directory(logger: Any, log_dir: str) -> list[str]:
    """Point the loggers that write the run's record at ``log_dir``; say what was moved.

    The ``metrics.csv`` logger (:data:`RUN_CSV_LOGGER`) always writes into the run's own log
    directory, whatever ``save_dir`` the setting holds: a run's saved ``config.yaml`` names the
    directory of the run that saved it, and a new run read from that file (into another
    ``trainer.default_root_dir``, or ``validate``/``test`` into ``<run>/test-<n>``) must not write
    into it. A ``WandbLogger``'s ``save_dir`` is the run's log directory too (Lightning puts
    ``results.json`` and the plots there when it is the first logger): unset, it becomes
    ``log_dir``; set to a directory that holds another run's record, it is moved to ``log_dir``
    with a notice, so that the other run's record is never rewritten.

    Args:
        logger: The ``trainer.logger`` setting (after :func:`with_run_csv_logger`).
        log_dir: The run's log directory.

    Returns:
        One notice for each ``WandbLogger`` moved away from another run's directory.
    """
    loggers = logger if isinstance(logger, list | tuple) else [logger]
    notices = []
    for index, item in enumerate(loggers):
        class_path = str(getattr(item, "class_path", ""))
        if not class_path or item.get("init_args") is None:
            continue
        save_dir = item.init_args.get("save_dir")
        if class_path.endswith("RunCSVLogger"):
            item.init_args.save_dir = log_dir
        elif class_path.endswith("WandbLogger"):
            if save_dir in (None, "."):
                item.init_args.save_dir = log_dir
            elif Path(str(save_dir)).resolve() != Path(log_dir).resolve() and holds_run_record(
                Path(str(save_dir))
            ):
                item.init_args.save_dir = log_dir
                where = (
                    f"trainer.logger[{index}]"
                    if isinstance(logger, list | tuple)
                    else "trainer.logger"
                )
                notices.append(
                    f"{where}.init_args.save_dir={str(save_dir)!r} holds another run's record "
                    f"(a saved config.yaml names its own run's directory); this run's wandb files "
                    f"and results go into {log_dir!r} instead"
                )
    return notices
