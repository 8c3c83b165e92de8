"""FedProx's proximal term on a client's parameters, where they are trained (client or server).

The term ``mu/2 ||w - w_start||^2`` (FedProx, Li et al. 2020) is added as its gradient, after the
loss's gradient was averaged over the processes: the Lightning host does it for a client's own
parameters, the block server (:mod:`fellrec.serving.block_host`) for the client's LoRA on the
middle blocks, so both sides of a split client get the same term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fellrec.models.sharding import is_sharded, local_part


@torch.no_grad()
def add_proximal_gradient(params: Sequence[nn.Parameter], anchor: torch.Tensor, mu: float) -> None:
    """Add FedProx's ``mu * (w - w_start)`` to each gradient: the gradient of its proximal term.

    The term ``mu/2 ||w - w_start||^2`` is applied to the gradient after it was averaged over the
    processes, so it counts once, as in the loss of one process; DDP's reducer would refuse a loss
    term that uses the parameters outside the forward pass. A sharded parameter takes its own rows
    of ``anchor``.

    Args:
        params: One client's parameters, in the order of its flat vector.
        anchor: Their values at the round start, flat ``(P,)``.
        mu: The proximal weight (> 0).
    """
    offset = 0
    for param in params:
        whole = anchor[offset : offset + param.numel()].view(param.shape)
        offset += param.numel()
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        if is_sharded(param):
            local = param.to_local()  # type: ignore[attr-defined]
            param.grad.to_local().add_(local - local_part(whole, param), alpha=mu)  # type: ignore[attr-defined]
        else:
            param.grad.add_(param - whole.to(param), alpha=mu)
