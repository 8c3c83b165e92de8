from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from federation_helpers import tiny_run
from fellrec.federation.strategies import FELLRec
from fellrec.models.attention_masks import position_ids_from_mask
from fellrec.models.process_transport import ProcessTransport
from fellrec.models.split import SplitModel
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.transport import LocalTransport, Payload, Server, Transport
from fellrec.models.transports import (
    TRANSPORT_KINDS,
    TransportKind,
    make_transport,
    register_transport,
)
from fellrec.training.records.results import RESULTS_FILE

ALLOWED = {
    ("to_server", "forward"): {"hidden_states", "attention_mask", "position_ids"},
    ("to_client", "forward"): {"hidden_states"},
    ("to_server", "backward"): {"grad_hidden_states"},
    ("to_client", "backward"): {"grad_hidden_states"},
}


class _Server:
    """A toy server: one trainable linear map; the mask zeroes padding, positions are unused."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 4)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(hidden)) * mask.unsqueeze(-1)


def _inputs(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    hidden.requires_grad_(requires_grad)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return hidden, mask, position_ids_from_mask(mask)


def _names(transport: LocalTransport) -> list[tuple[str, str, frozenset[str]]]:
    return [(p.direction, p.phase, frozenset(p.tensors)) for p in transport.payloads]


def test_payload_nbytes_is_numel_times_element_size() -> None:
    payload = Payload(
        "to_server",
        "forward",
        {"h": torch.zeros(2, 3, 4), "m": torch.zeros(2, 3, dtype=torch.long)},
    )
    assert payload.nbytes == 2 * 3 * 4 * 4 + 2 * 3 * 8  # 96 + 48


def test_call_server_equals_direct_call_with_gradients() -> None:
    server = _Server()
    hidden, mask, pos = _inputs()
    direct = server(hidden, mask, pos)
    (direct**2).sum().backward()
    want_input, want_weight = hidden.grad.clone(), server.linear.weight.grad.clone()
    hidden.grad = server.linear.weight.grad = server.linear.bias.grad = None

    transport = LocalTransport(record=True)
    out = transport.call_server(server, hidden, mask, pos)
    assert torch.equal(out, direct.detach())
    (out**2).sum().backward()
    assert torch.allclose(hidden.grad, want_input, atol=1e-7, rtol=0)
    assert torch.allclose(server.linear.weight.grad, want_weight, atol=1e-7, rtol=0)
    assert _names(transport) == [
        ("to_server", "forward", frozenset(ALLOWED["to_server", "forward"])),
        ("to_client", "forward", frozenset({"hidden_states"})),
        ("to_server", "backward", frozenset({"grad_hidden_states"})),
        ("to_client", "backward", frozenset({"grad_hidden_states"})),
    ]
    stats = transport.stats()
    h_bytes, int_bytes = 2 * 3 * 4 * 4, 2 * 3 * 8
    assert stats == {
        "calls": 1,
        "bytes_forward": (h_bytes + 2 * int_bytes) + h_bytes,
        "bytes_backward": 2 * h_bytes,
        "bytes_to_server": h_bytes + 2 * int_bytes + h_bytes,
        "bytes_to_client": 2 * h_bytes,
        "bytes_total": 4 * h_bytes + 2 * int_bytes,
    }
    transport.reset_counters()
    assert transport.stats()["bytes_total"] == 0
    assert transport.stats()["calls"] == 0


def test_frozen_client_side_still_trains_the_server() -> None:
    server = _Server()
    hidden, mask, pos = _inputs(requires_grad=False)
    transport = LocalTransport(record=True)
    out = transport.call_server(server, hidden, mask, pos)
    assert out.requires_grad
    out.sum().backward()
    assert server.linear.weight.grad is not None
    assert server.linear.weight.grad.abs().sum() > 0
    # h_front needs no gradient, so none is sent back to the client.
    assert [(p.direction, p.phase) for p in transport.payloads] == [
        ("to_server", "forward"),
        ("to_client", "forward"),
        ("to_server", "backward"),
    ]


def test_nothing_trainable_gives_a_constant() -> None:
    server = _Server()
    server.linear.requires_grad_(False)
    hidden, mask, pos = _inputs(requires_grad=False)
    out = LocalTransport().call_server(server, hidden, mask, pos)
    assert not out.requires_grad


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_evaluation_modes_send_forward_messages_only(context: type) -> None:
    server = _Server()
    hidden, mask, pos = _inputs()
    transport = LocalTransport(record=True)
    with context():
        out = transport.call_server(server, hidden, mask, pos)
        want = server(hidden, mask, pos)
    assert not out.requires_grad
    assert torch.equal(out, want)
    assert [(p.direction, p.phase) for p in transport.payloads] == [
        ("to_server", "forward"),
        ("to_client", "forward"),
    ]
    assert transport.stats()["bytes_backward"] == 0


def test_gradients_accumulate_over_micro_batches() -> None:
    server = _Server()
    first, mask, pos = _inputs()
    second = (first.detach() * 2).requires_grad_()
    for h in (first, second):
        (server(h, mask, pos) ** 2).sum().backward()
    want = server.linear.weight.grad.clone()
    server.linear.weight.grad = None
    transport = LocalTransport()
    for h in (first, second):
        (transport.call_server(server, h, mask, pos) ** 2).sum().backward()
    assert torch.allclose(server.linear.weight.grad, want, atol=1e-6, rtol=0)
    assert transport.calls == 2


def test_second_backward_through_the_transport_is_refused() -> None:
    server = _Server()
    hidden, mask, pos = _inputs()
    loss = LocalTransport().call_server(server, hidden, mask, pos).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


class _GraphsById(Transport):
    """A transport written as CONTRIBUTING.md says: its two exchanges and nothing else.

    It keeps each server graph under an id until its backward, as a server in another process
    does (the call's id is all that crosses).
    """

    def __init__(self) -> None:
        super().__init__()
        self.graphs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def run_server(
        self, server: Server, received: dict[str, torch.Tensor], grad: bool, input_grad: bool
    ) -> tuple[torch.Tensor, str | None]:
        hidden, mask, pos = (
            received[k] for k in ("hidden_states", "attention_mask", "position_ids")
        )
        if not grad:
            return server(hidden, mask, pos), None
        server_input = hidden.clone().requires_grad_(input_grad)
        with torch.enable_grad():
            server_output = server(server_input, mask, pos)
        call = f"call-{len(self.graphs)}"
        self.graphs[call] = (server_input, server_output)
        return server_output.detach(), call

    def backpropagate_server(self, graph: str, grad: torch.Tensor) -> torch.Tensor | None:
        server_input, server_output = self.graphs.pop(graph)
        torch.autograd.backward(server_output, grad)
        return server_input.grad if server_input.requires_grad else None


@pytest.mark.parametrize("client_trains", [True, False])
def test_a_new_transport_gets_the_seam_and_its_counts_from_the_shared_code(
    client_trains: bool,
) -> None:
    toy = _GraphsById()
    runs = []
    for transport in (LocalTransport(), toy):
        server = _Server()
        hidden, mask, pos = _inputs(requires_grad=client_trains)
        out = transport.call_server(server, hidden, mask, pos)
        loss = (out**2).sum()
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="already backpropagated"):
            loss.backward()
        with torch.no_grad():
            evaluated = transport.call_server(server, hidden, mask, pos)
        runs.append((out, evaluated, hidden.grad, server.linear.weight.grad, transport.stats()))
    (out, evaluated, h_grad, w_grad, stats), (toy_out, toy_eval, toy_h, toy_w, toy_stats) = runs
    assert torch.equal(toy_out, out) and torch.equal(toy_eval, evaluated)
    assert torch.equal(toy_w, w_grad)
    assert (toy_h is None and h_grad is None) if not client_trains else torch.equal(toy_h, h_grad)
    assert toy_stats == stats and stats["calls"] == 2
    assert toy.graphs == {}  # freed by the backward


def test_make_transport() -> None:
    assert isinstance(make_transport("local"), LocalTransport)
    assert isinstance(make_transport("process"), ProcessTransport)  # connects on first use
    assert set(TRANSPORT_KINDS) == {"local", "process"}
    assert TRANSPORT_KINDS["local"].server_in_process
    assert not TRANSPORT_KINDS["process"].server_in_process
    with pytest.raises(ValueError, match=r"model\.transport must be one of \['local', 'process'\]"):
        make_transport("carrier-pigeon")
    with pytest.raises(ValueError, match="'local' is already registered"):
        register_transport(TransportKind("local", lambda settings: LocalTransport(), True))


def test_a_registered_transport_trains_a_federation_exactly_as_local(
    tmp_path: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CONTRIBUTING.md's "Add a transport": the class above plus its registration, nothing else.
    monkeypatch.setitem(
        TRANSPORT_KINDS,
        "graphs-by-id",
        TransportKind("graphs-by-id", lambda settings: _GraphsById(), server_in_process=True),
    )
    runs = []
    for name in ("local", "graphs-by-id"):
        trainer, model, data, _ = tiny_run(
            tmp_path / name,
            tiny_encoder_dir,
            FELLRec(),
            model_options={"recommender": "sequential", "transport": name},
        )
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        results = json.loads((tmp_path / name / RESULTS_FILE).read_text())
        runs.append((results, model.client_parameters(), model.transport))
    (local, local_params, local_wire), (toy, toy_params, toy_wire) = runs
    assert isinstance(toy_wire, _GraphsById) and toy_wire.graphs == {}
    assert [r["train_loss"] for r in toy["history"]] == [r["train_loss"] for r in local["history"]]
    assert [r["val"] for r in toy["history"]] == [r["val"] for r in local["history"]]
    assert toy["overall"] == local["overall"]
    assert torch.equal(toy_params, local_params)
    assert toy_wire.stats() == local_wire.stats() and toy_wire.stats()["calls"] > 0


def _lora_llama(directory: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, lora)


@pytest.mark.parametrize(("k_front", "k_back"), [(1, 1), (0, 1), (2, 0)])
def test_only_allowed_tensors_cross(tiny_llama_dir: Path, k_front: int, k_back: int) -> None:
    model = _lora_llama(tiny_llama_dir)
    transport = LocalTransport(record=True)
    split = SplitModel(model, plan_split(num_blocks(model), k_front, k_back), transport)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 3000, (3, 7), generator=generator)
    attention_mask = torch.ones(3, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    hidden = split(input_ids, attention_mask)
    logits = model.get_base_model().lm_head(hidden)
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    loss.backward()

    seen = {(p.direction, p.phase) for p in transport.payloads}
    backward_to_client = ("to_client", "backward") in seen
    # With no client block before the server, h_front is a frozen embedding: no gradient for it.
    assert backward_to_client == (k_front > 0)
    assert len(transport.payloads) == 3 + backward_to_client
    for payload in transport.payloads:
        assert set(payload.tensors) == ALLOWED[payload.direction, payload.phase]
        for name, tensor in payload.tensors.items():
            if not tensor.is_floating_point():
                assert name in {"attention_mask", "position_ids"}
            for secret in (input_ids, labels):
                assert not (tensor.shape == secret.shape and torch.equal(tensor.long(), secret))
            assert tensor.shape[:2] == (3, 7)
    totals: dict[tuple[str, str], int] = {}
    for p in transport.payloads:
        key = (p.direction, p.phase)
        totals[key] = totals.get(key, 0) + sum(
            t.numel() * t.element_size() for t in p.tensors.values()
        )
    assert transport.bytes_sent == {key: totals.get(key, 0) for key in ALLOWED}
    hidden_bytes = 3 * 7 * 32 * 4
    assert transport.stats()["bytes_forward"] == 2 * hidden_bytes + 2 * 3 * 7 * 8
    assert transport.stats()["bytes_backward"] == hidden_bytes * (1 + backward_to_client)
