"""The run's wandb tables and images and its PNG plots, as a callback beside the round loop.

The Lightning layer (:mod:`fellrec.training`) logs scalars through ``log_dict`` and writes
``results.json``; it never imports reporting. :class:`RunReporter` reads what the loop recorded
(its history, the results it wrote) and adds what only wandb or a picture shows: the round as the
x-axis, a per-client table and similarity heatmap per round, the test tables and the plots next to
``results.json``. ``fellrec fit|validate|test`` add it; a plain ``Trainer`` gets it by listing it
after the loop in ``callbacks``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fellrec.reporting import wandb_log
from fellrec.training.rounds.loop import FederatedLoop

log = logging.getLogger(__name__)


def federated_loop(trainer: L.Trainer) -> FederatedLoop | None:
    """The trainer's :class:`FederatedLoop`, if it has one."""
    callbacks = getattr(trainer, "callbacks", [])
    return next((c for c in callbacks if isinstance(c, FederatedLoop)), None)


class RunReporter(Callback):
    """Logs each round's table and heatmap to wandb, then the test results, and draws the plots.

    Rank zero only; runs without a WandbLogger only get the plots. Rounds are logged once each,
    in order, as soon as they are in the loop's history (a resumed run logs the rounds its
    checkpoint holds first, into a new wandb run; a resumed wandb run keeps its own).
    """

    def __init__(self) -> None:
        self.logged_rounds = 0
        self._train_started = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Make the round the x-axis of wandb charts."""
        self.logged_rounds = 0
        self._train_started = False
        if trainer.is_global_zero:
            wandb_log.use_round_axis(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed wandb run (same id) already holds the checkpoint's rounds."""
        self._train_started = True
        loop = federated_loop(trainer)
        loggers = wandb_log.wandb_loggers(trainer)
        if (
            loop is not None
            and loggers
            and all(getattr(logger.experiment, "resumed", False) for logger in loggers)
        ):
            self.logged_rounds = loop.rounds_run

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the rounds finished since the last call (the checkpoint's, after a resume)."""
        self._log_new_rounds(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the last round(s)."""
        self._log_new_rounds(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run with no round left to train logs its checkpoint's rounds now."""
        if not self._train_started:
            self.on_train_start(trainer, pl_module)
            self._log_new_rounds(trainer)

    def _log_new_rounds(self, trainer: L.Trainer) -> None:
        loop = federated_loop(trainer)
        if loop is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        clients = len(loop.selection.best_scores) if loop.selection is not None else 0
        for record in loop.history[self.logged_rounds :]:
            wandb_log.log_round(trainer, record, clients, step=record.get("step"))
        self.logged_rounds = len(loop.history)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the test results to wandb and draw the run's plots from ``results.json``."""
        loop = federated_loop(trainer)
        if loop is None or not trainer.is_global_zero or loop.test_summary is None:
            return
        path = loop.results_path
        results: dict[str, Any] = (
            json.loads(path.read_text()) if path is not None else loop.test_summary
        )
        wandb_log.log_test(trainer, results)
        if path is None:
            return
        # A plotting failure must not fail a finished run: the results are already written.
        try:
            # matplotlib loads here, once per run, not with every `fellrec` command.
            from fellrec.reporting.plots import save_plots

            # A SIGTERM stops the drawing (a resume draws them): the scheduler waits for no plot.
            paths = save_plots(results, path.parent, stop=lambda: trainer.received_sigterm)
        except Exception as error:
            rank_zero_warn(f"could not write the plots ({error}); `fellrec report` redraws them")
        else:
            if trainer.received_sigterm:
                raise SIGTERMException
            log.info("plots written to %s", paths[0].parent if paths else path.parent)
