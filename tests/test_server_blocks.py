"""The host's side of the block server's LoRA: when values are pushed, fetched or left alone.

A recording stand-in for the transport (a unit test: the real one is tested against ``local`` in
tests/test_block_server.py) shows which requests each state of
:class:`~fellrec.training.host.server_blocks.RemoteServerBlocks` sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import build_tiny_encoder
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_encoder
from fellrec.models.transport import LocalTransport
from fellrec.models.transports import TRANSPORT_KINDS, TransportKind
from fellrec.training.host.server_blocks import (
    REMOTE_SERVER_BLOCKS,
    InProcessServerBlocks,
    RemoteServerBlocks,
    server_blocks_for,
)


class RecordingTransport:
    """Answers ``rows`` and ``optimizers`` requests and records every request."""

    address = "127.0.0.1:0"

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, kind: str, **fields: Any) -> Any:
        self.requests.append((kind, fields))
        if kind == "rows":
            return self.rows
        if kind == "optimizers":
            return [{"state": "server moments"}]
        return None

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.requests]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("bert4"), num_layers=4)


def _blocks(encoder: Path) -> tuple[RemoteServerBlocks, RecordingTransport]:
    model, _ = load_encoder(str(encoder))
    adapters = ClientAdapters(model, LoRASettings(r=2), num_clients=2)
    blocks = RemoteServerBlocks(adapters, None, k_front=1, k_back=1)  # type: ignore[arg-type]
    served = torch.arange(2 * blocks.side.num_parameters, dtype=torch.float32).view(2, -1)
    transport = RecordingTransport(served)
    blocks.transport = transport  # type: ignore[assignment]
    return blocks, transport


def test_only_a_server_that_trained_is_fetched(encoder):
    blocks, transport = _blocks(encoder)
    blocks.fetch()
    assert transport.kinds() == []  # nothing trained: the host's copy is current
    blocks.step(0, lr=None, proximal_mu=0.0)  # the client skipped its step
    blocks.fetch()
    assert transport.kinds() == ["step"]
    blocks.step(1, lr=0.01, proximal_mu=0.1)
    assert transport.requests[-1][1] == {"adapter": "client_1", "lr": 0.01, "proximal_mu": 0.1}
    blocks.fetch()
    assert transport.kinds() == ["step", "step", "rows"]
    assert torch.equal(blocks.side.rows(), transport.rows)  # the server's values, here now
    blocks.fetch()
    assert transport.kinds()[-1] == "rows" and len(transport.requests) == 3  # fetched once


def test_a_restored_checkpoint_is_pushed_once_before_the_next_round(encoder):
    blocks, transport = _blocks(encoder)
    blocks.restore({"optimizers": [{"state": "saved"}]})
    assert blocks.stale and transport.kinds() == []  # nothing sent until it is used
    blocks.begin_round(reset_optimizers=False)
    assert transport.kinds() == ["load_rows", "load_optimizers", "begin_round"]
    assert torch.equal(transport.requests[0][1]["rows"], blocks.side.rows())
    assert transport.requests[1][1] == {"states": [{"state": "saved"}]}
    blocks.begin_round(reset_optimizers=True)
    assert transport.kinds()[3:] == ["begin_round"]  # pushed once, not again
    blocks.restore(None)
    blocks.sync_if_stale()
    assert transport.kinds()[4:] == ["load_rows"]  # no optimizer states to load this time


def test_a_checkpoint_takes_the_servers_values_and_moments_only_when_asked(encoder):
    blocks, transport = _blocks(encoder)
    assert blocks.checkpoint_state(optimizers=False) == {"optimizers": None}
    assert transport.kinds() == []
    blocks.step(0, lr=0.1, proximal_mu=0.0)
    state = blocks.checkpoint_state(optimizers=True)
    assert transport.kinds() == ["step", "rows", "optimizers"]
    assert state == {"optimizers": [{"state": "server moments"}]}


def test_a_server_that_built_other_tensors_is_refused(encoder):
    blocks, transport = _blocks(encoder)
    with pytest.raises(ValueError, match="built other middle-block LoRA tensors"):
        blocks._attached({"keys": blocks.side.keys[:-1]})
    assert transport.kinds() == []
    blocks.trained = True
    blocks._attached({"keys": list(blocks.side.keys)})
    assert transport.kinds() == ["load_rows"] and not blocks.trained and not blocks.stale


def test_the_server_blocks_come_with_the_registered_transport(monkeypatch) -> None:
    local = LocalTransport()
    # In process, or not split: the null object.
    assert isinstance(server_blocks_for(None, local, "local", 1, 1), InProcessServerBlocks)
    assert isinstance(server_blocks_for(None, None, "process", 1, 1), InProcessServerBlocks)
    assert REMOTE_SERVER_BLOCKS["process"] is RemoteServerBlocks
    # A transport whose server runs elsewhere is refused until its server blocks are registered:
    # the host would never reach the server's share of the parameters.
    elsewhere = TransportKind("elsewhere", lambda settings: local, server_in_process=False)
    monkeypatch.setitem(TRANSPORT_KINDS, "elsewhere", elsewhere)
    with pytest.raises(ValueError, match="elsewhere runs the server's middle blocks outside"):
        server_blocks_for(None, local, "elsewhere", 1, 1)
    built: list[tuple[Any, ...]] = []
    blocks = InProcessServerBlocks()

    def factory(*args: Any) -> InProcessServerBlocks:
        built.append(args)
        return blocks

    monkeypatch.setitem(REMOTE_SERVER_BLOCKS, "elsewhere", factory)
    assert server_blocks_for(None, local, "elsewhere", 1, 2) is blocks
    assert built == [(None, local, 1, 2)]
