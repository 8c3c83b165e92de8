"""What to tell the user when a signal stops a fit: where it stopped and what a resume does.

A signal can stop a fit in the middle of a round (the unfinished round runs again from its start),
between two rounds, after the last round before the test, during the test, or while the plots
are drawn (``results.json`` is then written already). The round checkpoints hold every finished
round in every case, and ``--ckpt_path last`` ends with the files of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn


@dataclass(frozen=True)
class StoppedAt:
    """Where a fit stopped.

    Attributes:
        phase: ``"round"``, ``"between"``, ``"before_test"``, ``"test"`` or ``"plots"``.
        round: The round running (``"round"``), the next round (``"between"``) or the last
            finished round (the others).
    """

    phase: str
    round: int

    def describe(self) -> str:
        """``during round 2``, ``between rounds 0 and 1``, ``during the test after round 1``..."""
        if self.phase == "round":
            return f"during round {self.round}"
        if self.phase == "between":
            return f"between rounds {self.round - 1} and {self.round}"
        if self.phase == "before_test":
            return f"after its last round ({self.round}), before the test"
        if self.phase == "test":
            return f"during the test after round {self.round}"
        return f"while drawing the plots after round {self.round} (results.json is written)"


def stopped_at(trainer: L.Trainer, rounds_run: int, results_written: bool) -> StoppedAt:
    """Where the fit of ``trainer`` stopped.

    Args:
        trainer: The interrupted trainer.
        rounds_run: Rounds finished (the round loop's count).
        results_written: Whether the test wrote ``results.json`` already.
    """
    if trainer.state.fn == TrainerFn.TESTING:
        return StoppedAt("plots" if results_written else "test", rounds_run - 1)
    progress = trainer.fit_loop.epoch_progress.current  # a _StartedTracker: ready ... completed
    epoch = trainer.current_epoch
    if getattr(progress, "started", progress.completed) > progress.completed:
        return StoppedAt("round", epoch)
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        return StoppedAt("before_test", epoch - 1)
    return StoppedAt("between", epoch)


def interruption_notice(
    signal_name: str, where: StoppedAt, checkpointed_rounds: int, last: Path, resume: str
) -> str:
    """The message of a fit stopped by a signal: where, what is saved, the resume command.

    Args:
        signal_name: ``SIGTERM`` or ``SIGINT``.
        where: :func:`stopped_at`.
        checkpointed_rounds: Rounds the newest checkpoint holds.
        last: The path of ``last.ckpt``.
        resume: The command that resumes the run.
    """
    head = f"fellrec: fit stopped by {signal_name} {where.describe()}"
    if checkpointed_rounds == 0 or not last.exists():
        return f"{head}; no round had finished, so there is no checkpoint: run it again"
    held = f"{last} holds rounds 0-{checkpointed_rounds - 1}"
    if where.phase == "round":
        then = " (an unfinished round runs again from its start)"
    elif where.phase in ("before_test", "test"):
        then = ", all of them: the resume runs the test and writes results.json and the plots"
    elif where.phase == "plots":
        then = ", all of them: the resume tests again and draws the plots"
    else:
        then = ""
    return f"{head}; {held}{then}. Resume with:\n  {resume}"
