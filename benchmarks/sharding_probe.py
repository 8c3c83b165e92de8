"""A callback ``bench_sharding.py`` adds to ``fellrec fit``: per-process step time and memory.

Each process writes ``<directory>/rank-<r>.json``: training step times (wall seconds, in order),
the parameter bytes this process holds (all parameters, and those of the server's middle blocks),
its peak resident memory and, on a GPU, the peak allocated device memory.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fellrec.models.sharding import local_parameter_bytes
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import model_parts, num_blocks


class ShardingProbe(Callback):
    """Records step times and memory of this process.

    Args:
        directory: Where ``rank-<r>.json`` goes.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.steps: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.steps.append(time.perf_counter() - self._started)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.adapters.model  # type: ignore[union-attr]
        plan = plan_split(num_blocks(model), pl_module.k_front, pl_module.k_back)  # type: ignore[arg-type]
        blocks = model_parts(model)["blocks"]
        middle = [blocks[i] for i in plan.middle]  # type: ignore[index]
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "step_seconds": self.steps,
            "parameter_bytes": local_parameter_bytes([pl_module]),
            "middle_block_bytes": local_parameter_bytes(middle),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_device_bytes": (
                torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            ),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"rank-{trainer.global_rank}.json"
        path.write_text(json.dumps(record))
