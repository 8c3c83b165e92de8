"""The run's ``metrics.csv``, which a resumed run continues instead of replacing.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens its directory, so a run
resumed with ``--ckpt_path last`` would lose the rows of the rounds before the interruption.
:class:`RunCSVLogger` keeps them: :meth:`RunCSVLogger.start_at_round` (called by
``FederatedLoop`` when fitting starts) keeps the rows of the rounds the checkpoint holds and drops
the rest (an unfinished round is run again, and logged again). A fresh run starts at round 0, so its
file starts empty, as before.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class _KeepingExperimentWriter(ExperimentWriter):
    """Lightning's writer without the deletion of an existing ``metrics.csv`` on opening.

    It starts knowing the existing file's columns: Lightning's writer rewrites the file with the
    columns it knows whenever new ones come, so a writer that knew none (e.g. a resumed run that
    only tests) would rewrite it with the new columns alone and lose every earlier row.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.metrics_keys = self._existing_columns()

    def _existing_columns(self) -> list[str]:
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return sorted(csv.DictReader(file).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Keep the file: :meth:`keep_rounds_before` decides which rows stay."""

    def keep_rounds_before(self, first_round: int) -> None:
        """Rewrite ``metrics.csv`` with only the rows of rounds (epochs) before ``first_round``."""
        self.metrics = []
        if not self._fs.isfile(self.metrics_file_path):
            self.metrics_keys = []
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _epoch(row) < first_round]
        if not rows:
            self._fs.rm_file(self.metrics_file_path)
            self.metrics_keys = []
            return
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        # Lightning's writer appends to an existing file and rewrites it when new keys come.
        self.metrics_keys = sorted(header)


def _epoch(row: dict[str, Any]) -> float:
    """A row's epoch (Lightning writes it on every row); rows without one sort last."""
    try:
        return float(row.get("epoch") or "inf")
    except ValueError:
        return float("inf")


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (same arguments as ``CSVLogger``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use (as in ``CSVLogger``) but keeping the file."""
        if not isinstance(self._experiment, _KeepingExperimentWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def start_at_round(self, first_round: int) -> None:
        """Keep the record of rounds ``0 .. first_round - 1``; the run logs from ``first_round``.

        Rows still buffered from an earlier ``fit`` in this process are written first, so a
        second ``fit`` in the same process (``--ckpt_path`` on a finished run) keeps them too.
        """
        writer = self.experiment
        assert isinstance(writer, _KeepingExperimentWriter)
        writer.save()
        writer.keep_rounds_before(first_round)
