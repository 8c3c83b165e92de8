"""Which of a client's parameters belong to the server: the LoRA of the split model's middle blocks.

Under split execution the server runs the middle blocks: the frozen base shared by all clients
and every client's own LoRA on those blocks. In one process (``model.transport: local``) they are
simply part of each client's adapter; with a block server in its own process
(``model.transport: process``) that process holds them and trains them, and the client exchanges
them only as rows of the federation's parameter matrix. :class:`ServerSide` finds them in a
client's flat parameter vector (:class:`~fellrec.models.adapters.ClientAdapters`' fixed key order)
by module identity, so both sides agree on which values are the server's.
"""

from __future__ import annotations

import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters
from fellrec.models.split_plan import SplitPlan
from fellrec.models.split_support import model_blocks


class ServerSide:
    """The server's share of every slot's parameters (the middle blocks' LoRA).

    Args:
        adapters: The slots' adapters over the (peft-wrapped) base model.
        plan: Which blocks are the server's (``plan.middle``).
    """

    def __init__(self, adapters: ClientAdapters, plan: SplitPlan) -> None:
        blocks = model_blocks(adapters.model)
        middle = {id(p) for i in plan.middle for p in blocks[i].parameters()}
        self.adapters = adapters
        #: ``(P,)``: True where a slot's flat vector holds a middle-block value.
        self.mask = torch.cat(
            [
                torch.full((p.numel(),), id(p) in middle, dtype=torch.bool)
                for p in adapters.parameters(0)
            ]
        )
        positions = [id(p) in middle for p in adapters.parameters(0)]
        self._positions = positions
        #: The server-held keys, in the flat vector's order.
        self.keys = [k for k, held in zip(adapters.keys, positions, strict=True) if held]

    @property
    def num_parameters(self) -> int:
        """Server-held values per slot."""
        return int(self.mask.sum())

    def parameters(self, slot: int) -> list[nn.Parameter]:
        """The slot's server-held parameters, in key order."""
        params = self.adapters.parameters(slot)
        return [p for p, held in zip(params, self._positions, strict=True) if held]

    def client_keys_and_parameters(self, slot: int) -> tuple[list[str], list[nn.Parameter]]:
        """The slot's other parameters (the client's own), with their keys, in key order."""
        pairs = zip(
            self.adapters.keys, self.adapters.parameters(slot), self._positions, strict=True
        )
        kept = [(key, param) for key, param, held in pairs if not held]
        return [key for key, _ in kept], [param for _, param in kept]

    def rows(self) -> torch.Tensor:
        """Every slot's server-held values as held here, ``(S, Pm)`` float32 on the CPU."""
        return torch.stack(
            [
                torch.cat([p.detach().reshape(-1).float().cpu() for p in self.parameters(s)])
                for s in range(self.adapters.num_clients)
            ]
        )

    @torch.no_grad()
    def load_rows(self, rows: torch.Tensor) -> None:
        """Overwrite every slot's server-held values from ``(S, Pm)``."""
        expected = (self.adapters.num_clients, self.num_parameters)
        if tuple(rows.shape) != expected:
            raise ValueError(f"server rows of shape {tuple(rows.shape)}, expected {expected}")
        for slot in range(self.adapters.num_clients):
            offset = 0
            for param in self.parameters(slot):
                size = param.numel()
                param.copy_(rows[slot, offset : offset + size].view(param.shape))
                offset += size
