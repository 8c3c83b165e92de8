"""A host's link to its block server: the server-held LoRA, its round start and its steps.

With ``model.transport: process`` the block server process holds and trains every client's LoRA
on the middle blocks (:mod:`fellrec.serving.block_host`). The host keeps a copy of those values
only where the federation needs them whole: in the parameter matrix it hands the strategy (the
server's rows, fetched at each round end: the server's adapters are the ones aggregated), in
checkpoints and in exported adapters. Its own optimizers leave them out; each client step is
mirrored by a step on the server at the same learning rate.

Every other run (``model.transport: local``, or no split) holds and steps all of its parameters
itself: :class:`InProcessServerBlocks` answers the same calls with nothing to do, so the host
calls its :class:`ServerBlocks` without asking which one it has (:func:`server_blocks_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol

import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.process_transport import ProcessTransport
from fellrec.models.server_side import ServerSide
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import model_blocks, num_blocks
from fellrec.models.transport import Transport
from fellrec.models.transports import transport_kind

#: The checkpoint entry of a block server's state (written by :class:`RemoteServerBlocks` only).
CHECKPOINT_KEY = "fellrec_block_server"


class ServerBlocks(Protocol):
    """What a host asks of the part of its clients' parameters that a block server may hold."""

    def bind(
        self,
        backbone: str,
        causal_lm: bool,
        lora: LoRASettings,
        causal: bool,
        weight_decay: float,
        base_dropout: float | None = None,
    ) -> None:
        """Say what a block server is to build for this host."""

    def push(self) -> None:
        """Load the host's copy of the server-held values into the server."""

    def fetch(self) -> None:
        """Bring the server's values into the host's copy, if the server trained since."""

    def client_keys_and_parameters(self, slot: int) -> tuple[list[str], list[nn.Parameter]]:
        """What the slot's own optimizer steps here: everything but the server-held values."""
        ...

    def stepped_here(self, row: torch.Tensor) -> torch.Tensor:
        """The entries of a client's flat parameter row ``(P,)`` that the host steps itself."""
        ...

    def begin_round(self, reset_optimizers: bool) -> None:
        """Start a round on the server: its FedProx anchors, and fresh moments if asked."""

    def step(self, slot: int, lr: float | None, proximal_mu: float) -> None:
        """Step the slot's server-held values at ``lr`` (None: the client skipped its step)."""

    def sync_if_stale(self) -> None:
        """Load restored values (and optimizer states) into the server before it is used."""

    def held_parameters(self) -> list[nn.Parameter]:
        """The host's copies of every slot's server-held parameters."""
        ...

    def write_checkpoint(
        self, checkpoint: dict[str, Any], owner: nn.Module, optimizers: bool
    ) -> None:
        """Put the server's state into ``checkpoint``, a checkpoint of ``owner`` (the host)."""

    def read_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Take the server's state from a checkpoint that is being loaded."""


class InProcessServerBlocks:
    """No block server: the host holds and steps every parameter itself.

    Every call of :class:`ServerBlocks` has nothing to do, and checkpoints get nothing of it.

    Args:
        adapters: The host's adapters (``None`` before the host is built).
    """

    def __init__(self, adapters: ClientAdapters | None = None) -> None:
        self.adapters = adapters

    def bind(
        self,
        backbone: str,
        causal_lm: bool,
        lora: LoRASettings,
        causal: bool,
        weight_decay: float,
        base_dropout: float | None = None,
    ) -> None:
        """Nothing to build elsewhere."""

    def push(self) -> None:
        """Nothing to load: the host's values are the only ones."""

    def fetch(self) -> None:
        """Nothing to bring: the host's values are the only ones."""

    def client_keys_and_parameters(self, slot: int) -> tuple[list[str], list[nn.Parameter]]:
        """Every parameter of the slot."""
        assert self.adapters is not None, "the module is not built yet"
        return self.adapters.keys, self.adapters.parameters(slot)

    def stepped_here(self, row: torch.Tensor) -> torch.Tensor:
        """The whole row, as it is."""
        return row

    def begin_round(self, reset_optimizers: bool) -> None:
        """No server to start."""

    def step(self, slot: int, lr: float | None, proximal_mu: float) -> None:
        """No server-held values to step."""

    def sync_if_stale(self) -> None:
        """No server to bring up to date."""

    def held_parameters(self) -> list[nn.Parameter]:
        """None: nothing is held elsewhere."""
        return []

    def write_checkpoint(
        self, checkpoint: dict[str, Any], owner: nn.Module, optimizers: bool
    ) -> None:
        """Nothing to add: the host's state dict holds everything."""

    def read_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Nothing to restore beyond the host's state dict."""


class RemoteServerBlocks:
    """The part of every held client's parameters that lives in the block server.

    Args:
        adapters: The host's adapters (the server-held values in them are a copy).
        transport: The connection to the block server.
        k_front: ``model.k_front``.
        k_back: ``model.k_back``.
    """

    def __init__(
        self, adapters: ClientAdapters, transport: ProcessTransport, k_front: int, k_back: int
    ) -> None:
        self.adapters = adapters
        self.transport = transport
        self.plan = plan_split(num_blocks(adapters.model), k_front, k_back)
        self.side = ServerSide(adapters, self.plan)
        #: ``(P,)``: the server-held positions of a client's flat parameter vector.
        self.mask = self.side.mask
        first_middle = model_blocks(adapters.model)[self.plan.middle[0]]
        self._first_middle: nn.Module = first_middle
        #: Whether the server's values must be loaded from here before they are used next.
        self.stale = False
        #: Whether the server trained since the host's copy was last loaded or fetched.
        self.trained = False
        self._pending_optimizers: list[dict[str, Any]] | None = None

    def bind(
        self,
        backbone: str,
        causal_lm: bool,
        lora: LoRASettings,
        causal: bool,
        weight_decay: float,
        base_dropout: float | None = None,
    ) -> None:
        """Say what the server is to build for this host; it does at the first request.

        Once built, the server gets the host's values (:meth:`push`) before anything else.

        Args:
            backbone: ``model.backbone``.
            causal_lm: The base is a causal LM (the generative recommender).
            lora: The adapters' settings.
            causal: An encoder runs causally (the sequential recommender).
            weight_decay: ``model.weight_decay``.
            base_dropout: ``model.base_dropout`` (the server's blocks drop out as the client's).
        """

        def spec() -> dict[str, Any]:
            return {
                "backbone": backbone,
                "causal_lm": causal_lm,
                "lora": asdict(lora),
                "clients": tuple(self.adapters.client_ids),
                "k_front": self.plan.k_front,
                "k_back": self.plan.k_back,
                "causal": causal,
                "weight_decay": weight_decay,
                "base_dropout": base_dropout,
                # Where the model is now (Lightning moves it after setup): the server runs there.
                "device": str(next(self.adapters.model.parameters()).device),
            }

        self.transport.bind(
            spec,
            adapter_name=lambda: str(self.adapters.model.active_adapter),
            training=lambda: self._first_middle.training,
            attached=self._attached,
        )

    def _attached(self, described: dict[str, Any]) -> None:
        """Check what the server built, then load the host's values into it."""
        if described["keys"] != self.side.keys:
            raise ValueError(
                f"the block server at {self.transport.address} built other middle-block LoRA "
                f"tensors ({len(described['keys'])}) than this run holds ({len(self.side.keys)}):"
                " are both on the same versions of fellrec, transformers and peft?"
            )
        self.push()

    def push(self) -> None:
        """Load the host's copy of the server-held values into the server."""
        self.transport.request("load_rows", rows=self.side.rows())
        self.stale = self.trained = False

    def fetch(self) -> None:
        """Bring the server's values into the host's copy, if the server trained since."""
        if self.trained:
            self.side.load_rows(self.transport.request("rows"))
            self.trained = False

    def client_keys_and_parameters(self, slot: int) -> tuple[list[str], list[nn.Parameter]]:
        """What the slot's own optimizer steps: everything but the server-held values."""
        return self.side.client_keys_and_parameters(slot)

    def stepped_here(self, row: torch.Tensor) -> torch.Tensor:
        """The entries of a client's flat parameter row ``(P,)`` outside the server's part."""
        return row[~self.mask]

    def begin_round(self, reset_optimizers: bool) -> None:
        """Start a round on the server: its FedProx anchors, and fresh moments if asked."""
        self.sync_if_stale()
        self.transport.request("begin_round", reset_optimizers=reset_optimizers)

    def step(self, slot: int, lr: float | None, proximal_mu: float) -> None:
        """Step the slot's server-held values at ``lr`` (None: the client skipped its step)."""
        self.transport.request(
            "step",
            adapter=self.adapters.names[slot],
            lr=lr,
            proximal_mu=proximal_mu,
        )
        self.trained = self.trained or lr is not None

    def checkpoint_state(self, optimizers: bool) -> dict[str, Any]:
        """What a checkpoint needs of the server; its values go into the host's state dict.

        Args:
            optimizers: Include the server's optimizer states (needed when moments carry over
                to the next round; cleared at each round start otherwise).
        """
        self.fetch()
        return {"optimizers": self.transport.request("optimizers") if optimizers else None}

    def restore(self, state: dict[str, Any] | None) -> None:
        """After a checkpoint loaded: push its values (and optimizer states) before the next use."""
        self.stale = True
        if state is not None and state["optimizers"] is not None:
            self._pending_optimizers = state["optimizers"]

    def sync_if_stale(self) -> None:
        """Load restored values (and optimizer states) into the server before it is used."""
        if not self.stale:
            return
        self.push()
        if self._pending_optimizers is not None:
            self.transport.request("load_optimizers", states=self._pending_optimizers)
            self._pending_optimizers = None

    def held_parameters(self) -> list[nn.Parameter]:
        """The host's copies of every slot's server-held parameters."""
        return [p for s in range(self.adapters.num_clients) for p in self.side.parameters(s)]

    def write_checkpoint(
        self, checkpoint: dict[str, Any], owner: nn.Module, optimizers: bool
    ) -> None:
        """Put the server's values and (if asked) moments into a checkpoint of ``owner``.

        The values go into the host's state dict under their own names (fetched first, so they
        are the server's), the optimizer states under :data:`CHECKPOINT_KEY`.

        Args:
            checkpoint: The checkpoint being saved, with the host's ``state_dict``.
            owner: The host module whose parameters the state dict names.
            optimizers: As for :meth:`checkpoint_state`.
        """
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_state(optimizers=optimizers)
        names = {id(p): name for name, p in owner.named_parameters()}
        for param in self.held_parameters():
            checkpoint["state_dict"][names[id(param)]] = param.detach().clone()

    def read_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Push the loaded values (and moments) to the server before its next use.

        The host's state dict loads after this (Lightning's order), so nothing is sent yet.
        """
        self.restore(checkpoint.get(CHECKPOINT_KEY))


#: Builds a host's :class:`ServerBlocks` from its adapters, its transport, ``k_front`` and
#: ``k_back``.
ServerBlocksFactory = Callable[[ClientAdapters, Any, int, int], ServerBlocks]
#: The server blocks of each registered transport whose server runs outside the host
#: (``server_in_process=False`` in :mod:`fellrec.models.transports`), by transport name.
REMOTE_SERVER_BLOCKS: dict[str, ServerBlocksFactory] = {"process": RemoteServerBlocks}


def server_blocks_for(
    adapters: ClientAdapters,
    transport: Transport | None,
    transport_name: str,
    k_front: int,
    k_back: int,
) -> ServerBlocks:
    """The server-block behaviour that comes with a transport.

    Args:
        adapters: The host's adapters.
        transport: The split model's transport (``None`` when the model is not split).
        transport_name: ``model.transport``.
        k_front: ``model.k_front``.
        k_back: ``model.k_back``.

    Raises:
        ValueError: If the transport's server runs elsewhere and no server blocks are registered
            for it in :data:`REMOTE_SERVER_BLOCKS` (the host would never reach the server's
            share of the parameters).
    """
    if transport is None or transport_kind(transport_name).server_in_process:
        return InProcessServerBlocks(adapters)
    factory = REMOTE_SERVER_BLOCKS.get(transport_name)
    if factory is None:
        raise ValueError(
            f"model.transport: {transport_name} runs the server's middle blocks outside this "
            "process, but no ServerBlocks is registered for it "
            "(fellrec.training.host.server_blocks.REMOTE_SERVER_BLOCKS)"
        )
    return factory(adapters, transport, k_front, k_back)
