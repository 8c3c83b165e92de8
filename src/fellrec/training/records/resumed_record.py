"""How a resumed run's loggers keep the record of the rounds before the resume.

``metrics.csv`` (:class:`~fellrec.training.records.run_logger.RunCSVLogger`) keeps its rows of the
checkpoint's rounds and drops those of an unfinished round, which runs again; loggers that start a
new record on every run (wandb) get the finished rounds replayed from the loop's history, so a
resumed run's record equals the uninterrupted one's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from fellrec.training.records.round_metrics import round_metrics
from fellrec.training.records.run_logger import RunCSVLogger


def starts_a_new_record(logger: Logger) -> bool:
    """Whether a logger's record of a resumed run would lack the rounds before the resume.

    Lightning's ``CSVLogger`` deletes its file on opening and a wandb run that was not resumed
    (``WandbLogger(id=..., resume=...)``) is a new one; TensorBoard keeps its event files.
    """
    if isinstance(logger, CSVLogger):
        return True
    if isinstance(logger, WandbLogger):
        return not getattr(logger.experiment, "resumed", False)
    return False


def continue_record(
    loggers: Iterable[Logger], history: Sequence[dict[str, Any]], rounds_run: int
) -> None:
    """Make every logger's record hold the rounds a resumed run's checkpoint holds (rank zero).

    Args:
        loggers: The trainer's loggers.
        history: The loop's round records (``round``, ``step`` and the logged values).
        rounds_run: Rounds the checkpoint holds; the run logs from this round on.
    """
    finished = [r for r in history if r["round"] < rounds_run]
    for logger in loggers:
        if isinstance(logger, RunCSVLogger):
            logger.start_at_round(rounds_run)
        elif finished and starts_a_new_record(logger):
            for record in finished:
                logger.log_metrics(round_metrics(record), step=record.get("step", 0))
