"""A progress bar that speaks in federated terms: the round, and the client being trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar


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


def batch_client(batch: Any) -> int | None:
    """The client a training batch belongs to (``batch["client"]``), or ``None`` if untagged."""
    if not isinstance(batch, Mapping) or "client" not in batch:
        return None
    client = batch["client"]
    if isinstance(client, torch.Tensor):
        return int(client.reshape(-1)[0]) if client.numel() else None
    if isinstance(client, int):
        return client
    return None


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
