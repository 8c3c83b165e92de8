"""Progress in federated terms (the round, the client being trained): a bar or log lines."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from fellrec.training.batches.batch import TrainBatch

log = logging.getLogger(__name__)


def round_description(current_epoch: int, max_epochs: int | None) -> str:
    """The bar's description for a round: ``round 1 (2/5)``.

    The round number is 0-based as in the log lines, ``results.json`` and the plots; the
    fraction in parentheses counts from 1, as people count progress.

    Args:
        current_epoch: Lightning's 0-based epoch (one epoch is one federated round).
        max_epochs: The round budget; ``None`` or negative when unbounded.
    """
    if max_epochs is None or max_epochs < 0:
        return f"round {current_epoch}"
    return f"round {current_epoch} ({current_epoch + 1}/{max_epochs})"


def batch_client(batch: object) -> int | None:
    """The client a training batch belongs to, or ``None`` for a batch of another kind."""
    return batch.client if isinstance(batch, TrainBatch) else None


class FederatedProgressBar(TQDMProgressBar):
    """TQDM bar showing the round (``round 1 (2/5)``) and, in the postfix, the client.

    Batches arrive client by client within a round, so the postfix changes a few times per round;
    it is refreshed as soon as the client changes, not only at the bar's refresh rate.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.client: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Start the round's bar with ``round r (r+1/R)``."""
        super().on_train_epoch_start(trainer, *args)
        self.client = None
        self.train_progress_bar.set_postfix({}, refresh=False)  # last round's client is done
        self.train_progress_bar.set_description(
            round_description(trainer.current_epoch, trainer.max_epochs)
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the batch's client; show it at once when it changed."""
        client = batch_client(batch)
        if client is not None and client != self.client:
            self.client = client
            if self._train_progress_bar is not None and not self.train_progress_bar.disable:
                self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """Lightning's items plus ``client``."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run directory is fixed; a version number says nothing
        if self.client is not None:
            items["client"] = self.client
        return items


class FederatedProgressLog(ProgressBar):
    """Progress as occasional log lines, for a log that is a file (CI, nohup, Slurm).

    A terminal bar redraws itself with carriage returns, which a file keeps: thousands of updates
    per run. This callback writes one line when a client starts and at most one every
    ``interval_seconds`` within a client (``round 0 (1/3): batch 9/18, client 2, 4.1 batches/s``);
    the loop adds its own line per round with the validation scores.

    Args:
        interval_seconds: Least time between two progress lines of the same client.
    """

    def __init__(self, interval_seconds: float = 30.0) -> None:
        super().__init__()
        if interval_seconds < 0:
            raise ValueError(f"interval_seconds must be >= 0, got {interval_seconds}")
        self.interval_seconds = interval_seconds
        self.client: int | None = None
        self._enabled = True
        self._round_started = 0.0
        self._last_line = 0.0

    def disable(self) -> None:
        """Stop writing (Lightning calls this on processes other than rank zero)."""
        self._enabled = False

    def enable(self) -> None:
        """Write again."""
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Start the round's clock."""
        self.client = None
        self._round_started = self._last_line = time.monotonic()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """A line when the client changes, or when ``interval_seconds`` passed since the last."""
        if not self._enabled:
            return
        now = time.monotonic()
        client = batch_client(batch)
        if client == self.client and now - self._last_line < self.interval_seconds:
            return
        self.client = client
        self._last_line = now
        done = batch_idx + 1
        total = self.total_train_batches
        of = f"/{total}" if isinstance(total, int) else ""
        rate = done / max(now - self._round_started, 1e-9)
        who = f", client {client}" if client is not None else ""
        log.info(
            "%s: batch %d%s%s, %.1f batches/s",
            round_description(trainer.current_epoch, trainer.max_epochs),
            done,
            of,
            who,
            rate,
        )
