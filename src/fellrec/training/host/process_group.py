"""What a host exchanges with the other processes of its run (DDP or sharded), by the trainer.

Each helper is a collective under several processes (every process must call it at the same
point) and returns its input unchanged in a one-process run or without a trainer.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def _world(trainer: L.Trainer | None) -> int:
    return 1 if trainer is None else int(trainer.world_size)


def gather_objects(trainer: L.Trainer | None, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if _world(trainer) == 1:
        return [obj]
    gathered: list[Any] = [None] * _world(trainer)
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def reduce_sum(
    trainer: L.Trainer | None, tensor: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``tensor`` summed over the processes (reduced on ``device``, returned on the CPU)."""
    if trainer is None or _world(trainer) == 1:
        return tensor
    reduced = trainer.strategy.reduce(tensor.to(device), reduce_op="sum")
    return reduced.cpu() if isinstance(reduced, torch.Tensor) else tensor


def max_over_processes(trainer: L.Trainer | None, value: int, device: torch.device) -> int:
    """The largest ``value`` of any process (e.g. how often all must run a sharded block)."""
    if _world(trainer) == 1:
        return value
    count = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count.item())
