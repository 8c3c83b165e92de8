"""A callback ``bench_block_server.py`` adds to ``fellrec fit``: step times and what crossed.

Writes ``<directory>/probe.json``: the training step times (wall seconds, in order), the
transport's tensor bytes and server calls, and for ``model.transport: process`` the bytes that
went over the connection by request kind (pickled messages both ways: tensors, control values,
parameter rows).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class BlockServerProbe(Callback):
    """Records step times and the transport's traffic of a one-process run.

    Args:
        directory: Where ``probe.json`` goes.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.steps: list[float] = []
        self._started = 0.0
        self._traffic: dict[str, int] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        transport = pl_module.transport  # type: ignore[union-attr]
        transport.reset_counters()
        self._wire_at_start = dict(getattr(transport, "wire_bytes_by_request", {}))

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.steps.append(time.perf_counter() - self._started)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        transport = pl_module.transport  # type: ignore[union-attr]
        wire = getattr(transport, "wire_bytes_by_request", None)
        record = {
            "transport": type(transport).__name__,
            "step_seconds": self.steps,
            "tensor_bytes": transport.stats()["bytes_total"],
            "calls": transport.stats()["calls"],
            "wire_bytes": (
                None
                if wire is None
                else {k: v - self._wire_at_start.get(k, 0) for k, v in wire.items()}
            ),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "probe.json").write_text(json.dumps(record))
