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


def into_run_directory(logger: Any, log_dir: str, resuming_in_place: bool = False) -> list[str]:
    """Point the loggers that write the run's record at ``log_dir``; say what was moved.

    Lightning writes a run's record where its first logger logs (``results.json``, ``config.yaml``,
    the plots), and a run's saved ``config.yaml`` names the directories of the run that saved it.
    So a new run read from that file (into another ``trainer.default_root_dir``, or ``validate`` /
    ``test`` into ``<run>/test-<n>``) must not log where it says:

    - the ``metrics.csv`` logger (:data:`RUN_CSV_LOGGER`) always logs into ``log_dir``;
    - a ``WandbLogger`` without a ``save_dir`` logs into ``log_dir`` (its ``save_dir`` is the run's
      log directory);
    - any logger whose ``save_dir`` holds a run's record (``run_directory.holds_run_record``) is
      moved to ``log_dir``, with a notice, unless this is a resumed fit of the run in its own
      directory (``resuming_in_place``: that record is its own). A ``save_dir`` of its own that
      holds no record (``wandb-runs/``, Lightning's versioned ``lightning_logs/``) is left alone.

    Args:
        logger: The ``trainer.logger`` setting (after :func:`with_run_csv_logger`).
        log_dir: The run's log directory.
        resuming_in_place: A ``fit`` resumed (``ckpt_path``) in a ``trainer.default_root_dir``
            that holds the run's record.

    Returns:
        One notice for each logger moved away from a recorded run's directory.
    """
    loggers = logger if isinstance(logger, list | tuple) else [logger]
    notices = []
    for index, item in enumerate(loggers):
        class_path = str(getattr(item, "class_path", ""))
        if not class_path or item.get("init_args") is None:
            continue
        save_dir = item.init_args.get("save_dir")
        if class_path.endswith("RunCSVLogger") or (
            class_path.endswith("WandbLogger") and save_dir in (None, ".")
        ):
            item.init_args.save_dir = log_dir
            continue
        if save_dir is None or resuming_in_place:
            continue
        directory = Path(str(save_dir)).expanduser()
        if directory.resolve() != Path(log_dir).resolve() and holds_run_record(directory):
            item.init_args.save_dir = log_dir
            where = (
                f"trainer.logger[{index}]" if isinstance(logger, list | tuple) else "trainer.logger"
            )
            notices.append(
                f"{where}.init_args.save_dir={str(save_dir)!r} holds a recorded run (a saved "
                f"config.yaml names the directory of the run that saved it); this run logs into "
                f"{log_dir!r} instead, so that record is not written to"
            )
    return notices
