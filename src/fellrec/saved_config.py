"""``config.yaml`` of a run: written when it starts, kept as it is by a resume that changes nothing.

LightningCLI's ``SaveConfigCallback`` writes the config when the trainer is set up, before a
checkpoint is restored: a resume whose settings do not fit the checkpoint would leave the run's
``config.yaml`` describing a run that never happened, and every resume would rewrite it with
``ckpt_path: last``. :class:`RunConfigSaver` writes a fresh run's config as before; a resumed run's
only once its checkpoint is restored, and only when a setting changed (e.g. more rounds), keeping
the file's ``ckpt_path``: a resumed run's ``config.yaml`` is the one an uninterrupted run writes.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback


class RunConfigSaver(SaveConfigCallback):
    """``SaveConfigCallback`` that leaves a resumed run's ``config.yaml`` alone if unchanged."""

    _deferred = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Save a fresh run's config; defer a resumed run's until its checkpoint is restored."""
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective under DDP: every process asks
        assert log_dir is not None
        resuming = bool(self.config.get("ckpt_path")) and trainer.is_global_zero
        held = resuming and (Path(log_dir) / self.config_filename).is_file()
        # Every process takes the same path (the parent's setup broadcasts).
        self._deferred = bool(trainer.strategy.broadcast(held))
        if not self._deferred:
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The checkpoint is restored: the resumed run goes on with this config."""
        self._save_deferred(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run with no round left to train goes on to its test with this config."""
        self._save_deferred(trainer)

    def _save_deferred(self, trainer: L.Trainer) -> None:
        if not self._deferred:
            return
        self._deferred = False
        self.already_saved = True
        if not trainer.is_global_zero:
            return
        path = Path(str(trainer.log_dir)) / self.config_filename
        saved = yaml.safe_load(path.read_text())
        # Where this process resumed from is not a setting of the run: the file keeps its own.
        config = self.config.clone()
        config.ckpt_path = saved.get("ckpt_path") if isinstance(saved, dict) else None
        if yaml.safe_load(self.parser.dump(config, skip_none=False)) == saved:
            return
        self.parser.save(
            config, str(path), skip_none=False, overwrite=True, multifile=self.multifile
        )
