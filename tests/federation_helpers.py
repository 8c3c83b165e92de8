"""Building tiny federated runs for the integration tests (real Lightning, tiny real encoder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from fellrec.data.pipeline import DatasetSettings
from fellrec.federation.strategies import Strategy
from fellrec.reporting.run_reporter import RunReporter
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.probes.privacy_probe import PrivacyProbe
from fellrec.training.rounds.loop import FederatedLoop

SMALL_SYNTHETIC = {"num_users": 90, "num_items": 60, "num_categories": 4}


def tiny_run(
    root: Path,
    encoder_dir: Path,
    strategy: Strategy,
    *,
    rounds: int = 2,
    num_clients: int = 3,
    cache_dir: Path | None = None,
    extra_callbacks: list[Callback] | None = None,
    data_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    trainer_options: dict[str, Any] | None = None,
) -> tuple[L.Trainer, FederatedModule, FederatedDataModule, FederatedLoop]:
    """A federation on a small synthetic catalog with a tiny encoder, laid out like the CLI's."""
    data_settings: dict[str, Any] = {
        "history_length": 4,
        "num_clients": num_clients,
        "partition": "iid",
        "batch_size": 8,
        "eval_batch_size": 16,
        "max_train_examples": 120,
        "cache_dir": str(cache_dir or root / "cache"),
        **(data_options or {}),
    }
    data = FederatedDataModule(
        dataset=DatasetSettings(format="synthetic", options=dict(SMALL_SYNTHETIC)),
        **data_settings,
    )
    model_settings: dict[str, Any] = {
        # The RecFormer-style encoder by default: these runs test the federation around it;
        # tests of the sequential recommender pass recommender="sequential".
        "recommender": "encoder",
        "lr": 5e-3,
        "max_history_tokens": 48,
        "max_item_tokens": 8,
        **(model_options or {}),
    }
    model = FederatedModule(backbone=str(encoder_dir), **model_settings)
    loop = FederatedLoop(strategy=strategy)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=rounds,
        default_root_dir=str(root),
        logger=CSVLogger(str(root), name="", version=""),
        callbacks=[
            loop,
            RunReporter(),
            PrivacyProbe(),
            ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True),
            *(extra_callbacks or []),
        ],
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **(trainer_options or {}),
    )
    return trainer, model, data, loop


class SlowRoundsFrom(Callback):
    """Makes a run's rounds from ``first_round`` on slow, so that a signal lands inside one.

    Used by the CLI's signal tests through the config (``trainer.callbacks``): at the first batch
    of ``first_round`` it writes ``marker`` (the test then sends its signal), then sleeps
    ``seconds`` after every batch.
    """

    def __init__(self, first_round: int, marker: str, seconds: float = 0.5) -> None:
        self.first_round = first_round
        self.marker = Path(marker)
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Mark the slow round's start, then sleep."""
        if trainer.current_epoch >= self.first_round:
            self.marker.touch()
            time.sleep(self.seconds)


class WaitForSignalAt(Callback):
    """Holds a run at one point until the signal a test sends there has arrived.

    Used by the CLI's signal tests through the config (``trainer.callbacks``): at ``phase`` it
    writes ``marker`` (the test then sends SIGTERM) and waits, at most ``seconds``, until the
    trainer has received it. Phases: ``between`` (the end of round 0, before its checkpoint is
    saved), ``test`` (after the test's first batch), ``plots`` (when the test ends, before the
    plots are drawn).
    """

    def __init__(self, phase: str, marker: str, seconds: float = 120.0) -> None:
        if phase not in ("between", "test", "plots"):
            raise ValueError(f"unknown phase {phase!r}")
        self.phase = phase
        self.marker = Path(marker)
        self.seconds = seconds

    def _hold(self, trainer: L.Trainer) -> None:
        self.marker.touch()
        deadline = time.monotonic() + self.seconds
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Between rounds 0 and 1."""
        if self.phase == "between" and trainer.current_epoch == 0:
            self._hold(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """During the test."""
        if self.phase == "test" and not self.marker.exists():
            self._hold(trainer)

    def on_test_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Before the plots."""
        if self.phase == "plots":
            self._hold(trainer)
