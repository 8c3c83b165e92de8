"""How a client's optimizer steps: its parameter groups, the in-round schedule, averaged gradients.

Each client has its own AdamW over its adapter (at ``model.lr``) and its item components (at
``model.items.lr``). Under data parallelism every process computes a share of each global batch;
the gradients are averaged across processes here rather than by DDP's bucketed hooks, which assume
one fixed set of trainable parameters that per-client routing breaks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fellrec.models.adapters import CLIENT_MODULE_PREFIX
from fellrec.models.sharding import is_sharded

LR_DECAYS = ("none", "linear", "cosine")
#: Names of the item ID parameters (``model.items.weight_decay`` decays these only: decaying the
#: biases would pull them from the popularity they start at, and the temperature toward 1).
ID_PARAMETER_PREFIXES = (
    f"{CLIENT_MODULE_PREFIX}id_embedding",
    f"{CLIENT_MODULE_PREFIX}id_projection",
)


def schedule_factor(step: int, total: int, warmup_steps: int, decay: str) -> float:
    """Learning-rate multiplier at optimizer ``step`` (0-based) of ``total`` steps in a round."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay == "none" or total <= 1:
        return factor
    progress = min(1.0, step / (total - 1))
    if decay == "linear":
        return factor * (1.0 - progress)
    return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


class RoundSchedule:
    """Each client's optimizer steps within a round: round learning rates, warm-up and decay.

    At a round's start every optimizer group's rate becomes its ``base_lr`` times the client's
    learning-rate scale (FELLRec's heating); each step then multiplies that by
    :func:`schedule_factor` of the step's position among the client's steps of the round.

    Args:
        warmup_steps: ``model.warmup_steps``.
        lr_decay: ``model.lr_decay``.
        reset_optimizer_each_round: Clear the optimizers' moments at each round start.
        lr: ``model.lr``: the base rate of a group that carries no ``base_lr`` of its own.
    """

    def __init__(
        self, warmup_steps: int, lr_decay: str, reset_optimizer_each_round: bool, lr: float
    ) -> None:
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"model.lr_decay must be one of {LR_DECAYS}, got {lr_decay!r}")
        self.warmup_steps = warmup_steps
        self.lr_decay = lr_decay
        self.reset_optimizer_each_round = reset_optimizer_each_round
        self.lr = lr
        self.steps_total: dict[int, int] = {}
        self.steps_done: dict[int, int] = {}
        self.lr_scales: list[float] = []

    def start(
        self, optimizers: Sequence[Any], lr_scales: Sequence[float], steps_total: dict[int, int]
    ) -> None:
        """Start a round: each slot's optimizer at its scaled rates, ``steps_total`` steps ahead.

        Args:
            optimizers: One per slot (Lightning's wrappers or plain torch optimizers).
            lr_scales: Each slot's learning-rate scale this round.
            steps_total: Each slot's optimizer steps this round (slots without steps: 1).
        """
        self.steps_total = dict(steps_total)
        self.steps_done = {}
        self.lr_scales = list(lr_scales)
        for optimizer, scale in zip(optimizers, lr_scales, strict=True):
            if self.reset_optimizer_each_round:
                getattr(optimizer, "optimizer", optimizer).state.clear()
            for group in optimizer.param_groups:
                group["round_lr"] = group.get("base_lr", self.lr) * scale
                group["lr"] = group["round_lr"]

    def next_rate(self, slot: int, base_lr: float) -> float:
        """The rate a group with ``base_lr`` gets at the slot's next step (what :meth:`step` sets).

        For parameters stepped elsewhere in the same rhythm (a block server's share).
        """
        step = self.steps_done.get(slot, 0)
        total = self.steps_total.get(slot, 1)
        factor = schedule_factor(step, total, self.warmup_steps, self.lr_decay)
        return base_lr * self.lr_scales[slot] * factor

    def step(self, slot: int, optimizer: Any) -> None:
        """Set the slot's rates for its next step of the round, then step ``optimizer``."""
        step = self.steps_done.get(slot, 0)
        total = self.steps_total.get(slot, 1)
        factor = schedule_factor(step, total, self.warmup_steps, self.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = group.get("round_lr", self.lr) * factor
        optimizer.step()
        self.steps_done[slot] = step + 1


def client_param_groups(
    keys: Sequence[str],
    params: Sequence[nn.Parameter],
    lr: float,
    item_lr: float | None,
    id_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """A client's AdamW groups: the adapter at ``lr``, its item components at ``item_lr``.

    Each group keeps its ``base_lr``, which a round's learning-rate scale multiplies. Sharded
    adapter parameters (DTensors) get a group of their own: AdamW's multi-tensor kernels refuse a
    group that mixes them with plain tensors. With ``id_weight_decay`` the item ID embeddings (and
    their projection) get a group of their own with that decay; the other groups keep the
    optimizer's default (``model.weight_decay``). Without it the item components stay one group,
    as checkpoints written before the switch existed expect.

    Args:
        keys: The client's parameter names (item components start with ``items.``).
        params: The parameters, in the same order.
        lr: ``model.lr``.
        item_lr: ``model.items.lr`` (None: ``lr``).
        id_weight_decay: ``model.items.weight_decay`` (None: no group of its own).

    Returns:
        The groups, each with ``params``, ``lr`` and ``base_lr`` (and ``weight_decay`` for the
        ID group).
    """
    pairs = list(zip(keys, params, strict=True))
    adapter = [p for key, p in pairs if not key.startswith(CLIENT_MODULE_PREFIX)]
    items = [(key, p) for key, p in pairs if key.startswith(CLIENT_MODULE_PREFIX)]
    plain = [p for p in adapter if not is_sharded(p)]
    sharded = [p for p in adapter if is_sharded(p)]
    groups: list[dict[str, Any]] = [
        {"params": group, "lr": lr, "base_lr": lr} for group in (plain, sharded) if group
    ]
    item_lr = item_lr if item_lr is not None else lr
    if id_weight_decay is None:
        if items:
            groups.append({"params": [p for _, p in items], "lr": item_lr, "base_lr": item_lr})
        return groups
    ids = [p for key, p in items if key.startswith(ID_PARAMETER_PREFIXES)]
    rest = [p for key, p in items if not key.startswith(ID_PARAMETER_PREFIXES)]
    if ids:
        groups.append(
            {"params": ids, "lr": item_lr, "base_lr": item_lr, "weight_decay": id_weight_decay}
        )
    if rest:
        groups.append({"params": rest, "lr": item_lr, "base_lr": item_lr})
    return groups


def average_gradients(
    params: Sequence[nn.Parameter],
    diverged: bool,
    world_size: int,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor],
) -> bool:
    """Replace the gradients by their mean over the processes; whether any process diverged.

    Sharded parameters are left alone: FSDP's reduce-scatter already averaged their gradients.

    Args:
        params: One client's parameters (a missing gradient counts as zeros).
        diverged: Whether this process saw a NaN/inf loss for the client in this step.
        world_size: Number of processes.
        reduce_sum: Sums a tensor over the processes.

    Returns:
        True when some process diverged (the gradients are then left as they are).
    """
    device = params[0].device
    params = [p for p in params if not is_sharded(p)]
    flat = torch.cat(
        [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device)
            for p in params
        ]
        + [torch.tensor([float(diverged)], device=device)]
    )
    if world_size > 1:
        flat = reduce_sum(flat)
        flat[:-1] /= world_size
    if bool(flat[-1] > 0):
        return True
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset : offset + size].view_as(p).to(p.dtype)
        offset += size
    return False
