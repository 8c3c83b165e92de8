"""The ``model.transport`` registry: each name, how its transport is built and what it needs.

A transport (:class:`~fellrec.models.transport.Transport`) is one class; registering it here is all
the rest of fellrec needs: the settings checks, the host and the DP-SGD checks ask the registered
:class:`TransportKind` rather than comparing names (``CONTRIBUTING.md``, "Add a transport").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fellrec.models.process_transport import BlockServerSettings, ProcessTransport
from fellrec.models.transport import LocalTransport, Transport


@dataclass(frozen=True)
class TransportKind:
    """What one ``model.transport`` value means.

    Attributes:
        name: The ``model.transport`` value.
        build: Builds the transport from ``model.block_server`` (where a server outside this
            process runs; a transport in process ignores it).
        server_in_process: The server's middle blocks are modules of this process, trained by
            its optimizers. When False (a block server), the run must be split
            (``model.split_execution``), in full precision (no ``model.load_in_8bit``), in one
            training process, and without ``model.dp_sgd`` (the server steps its LoRA from its
            own unclipped gradients); the host reaches the server's share of the parameters
            through its :class:`~fellrec.training.host.server_blocks.ServerBlocks`.
    """

    name: str
    build: Callable[[BlockServerSettings], Transport]
    server_in_process: bool


#: Every known ``model.transport``, by name.
TRANSPORT_KINDS: dict[str, TransportKind] = {}


def register_transport(kind: TransportKind) -> TransportKind:
    """Make ``kind.name`` a valid ``model.transport``.

    Raises:
        ValueError: If the name is taken.
    """
    if kind.name in TRANSPORT_KINDS:
        raise ValueError(f"model.transport {kind.name!r} is already registered")
    TRANSPORT_KINDS[kind.name] = kind
    return kind


def transport_kind(name: str) -> TransportKind:
    """The registered kind of ``model.transport: name``.

    Raises:
        ValueError: If the name is unknown; the message lists the known ones.
    """
    kind = TRANSPORT_KINDS.get(name)
    if kind is None:
        raise ValueError(f"model.transport must be one of {sorted(TRANSPORT_KINDS)}, got {name!r}")
    return kind


def make_transport(name: str, block_server: BlockServerSettings | None = None) -> Transport:
    """The wire between the clients' and the server's blocks, by ``model.transport`` name.

    Args:
        name: A registered name: ``local`` (in process) or ``process`` (a block server process).
        block_server: Where a server outside this process runs (default settings when None).

    Raises:
        ValueError: If the name is unknown; the message lists the known ones.
    """
    kind = transport_kind(name)
    return kind.build(block_server if block_server is not None else BlockServerSettings())


register_transport(
    TransportKind("local", lambda settings: LocalTransport(), server_in_process=True)
)
register_transport(TransportKind("process", ProcessTransport, server_in_process=False))
