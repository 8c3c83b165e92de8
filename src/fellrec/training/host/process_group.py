"""What a host exchanges with the other processes of its run (DDP or sharded), by the trainer.

Each exchange is a collective under several processes (every process must call it at the same
point) and returns its input unchanged in a one-process run or without a trainer.
:func:`check_process_launch`, not a collective, refuses the one way of starting those processes
that a federation cannot use.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from fellrec.training.host.process_launch import spawned_launch_message


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


def check_process_launch(trainer: L.Trainer, setting: object = None) -> None:
    """Refuse a strategy that trains in processes spawned or forked from this one.

    Lightning's multiprocessing launcher (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``, a
    ``start_method`` other than ``popen``, or ``auto`` with several devices in a notebook) hands
    only the model's weights back to the launching process. A federation's state lives in its
    callback and host: the rounds run, each client's selected round, the round history. The
    launching process would then test an unselected model and write a record of zero rounds
    (measured: the quickstart, at batch 16, under ``ddp_fork`` trained as under ``ddp``, and its
    ``results.json`` said 0 rounds and test NDCG@10 0.18 against 0.23). ``ddp`` and
    ``model_parallel`` start every process as a fresh copy of the command, so each holds the
    whole state.

    Args:
        trainer: The run's trainer, its strategy configured.
        setting: What ``trainer.strategy`` was set to, when known (named in the error).

    Raises:
        ValueError: For a spawning or forking launcher.
    """
    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _MultiProcessingLauncher):
        return
    # Lightning keeps the start method on the launcher only (a private attribute).
    start_method = getattr(launcher, "_start_method", "spawn")
    raise ValueError(spawned_launch_message(setting, type(trainer.strategy).__name__, start_method))
