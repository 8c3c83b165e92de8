"""The block server: the middle blocks in their own process (``model.transport: process``).

Claims: training, evaluation and generation through a block server process equal the in-process
transport number for number (dropout on, so the random state really crosses); the server's LoRA
is what the federation aggregates (the host's own copy is poisoned and never read); a run whose
server dies stops with a clear error and resumes from its checkpoint to the uninterrupted
result; a client that goes away leaves nothing behind on the server.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import build_tiny_encoder, build_tiny_llama
from federation_helpers import tiny_run
from fellrec.federation.split_plan import plan_split
from fellrec.federation.strategies import FedProx, FELLRec, Strategy
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_encoder
from fellrec.models.process_transport import (
    SERVER_KEY_ENV,
    BlockServerError,
    BlockServerSettings,
    ProcessTransport,
)
from fellrec.models.prompts import PromptSettings
from fellrec.models.server_side import ServerSide
from fellrec.process_links import receive, send
from fellrec.serving.block_host import BlockHost, BlockHostSpec
from fellrec.serving.block_server import BlockServer, serve
from fellrec.training.federated_module import FederatedModule
from fellrec.training.results import RESULTS_FILE


@pytest.fixture(scope="module")
def dropout_encoder(tmp_path_factory) -> Path:
    """A 4-layer tiny BERT with dropout 0.1: two middle blocks under the default 1/1 split."""
    return build_tiny_encoder(tmp_path_factory.mktemp("bert-dropout"), num_layers=4)


def _spec(encoder: Path, clients: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {
        "backbone": str(encoder),
        "causal_lm": False,
        "lora": asdict(LoRASettings()),
        "clients": clients,
        "k_front": 1,
        "k_back": 1,
        "causal": True,
        "weight_decay": 0.0,
    }


# ---------------------------------------------------------------------------------- unit tests
def test_the_server_side_is_the_lora_of_the_middle_blocks(dropout_encoder):
    model, _ = load_encoder(str(dropout_encoder))
    adapters = ClientAdapters(model, LoRASettings(r=2), num_clients=2)
    side = ServerSide(adapters, plan_split(4, 1, 1))
    # Blocks 1 and 2 are the server's: query and value, lora_A and lora_B each.
    assert len(side.keys) == 2 * 2 * 2
    assert all(".layer.1." in k or ".layer.2." in k for k in side.keys)
    assert side.num_parameters == 2 * 2 * (2 * 32 + 32 * 2)
    assert int(side.mask.sum()) == side.num_parameters
    keys, params = side.client_keys_and_parameters(1)
    assert not set(keys) & set(side.keys) and len(keys) + len(side.keys) == len(adapters.keys)
    rows = torch.arange(2 * side.num_parameters, dtype=torch.float32).view(2, -1)
    side.load_rows(rows)
    assert torch.equal(side.rows(), rows)
    # The rows are the vector's masked positions, in its order.
    assert torch.equal(adapters.get_vector(1)[side.mask], rows[1])
    with pytest.raises(ValueError, match="expected"):
        side.load_rows(rows[:, :3])


def _forward_request(call: str, adapter: str = "client_0", grad: bool = True) -> dict[str, Any]:
    return {
        "kind": "forward",
        "call": call,
        "adapter": adapter,
        "training": True,
        "grad": grad,
        "input_grad": True,
        "hidden": torch.randn(2, 5, 32),
        "mask": torch.ones(2, 5, dtype=torch.long),
        "positions": torch.arange(5).expand(2, 5),
        "rng": None,
        "autocast": None,
        "cache": None,
        "cache_position": None,
    }


def test_a_host_keeps_graphs_per_call_and_drops_what_a_client_left(dropout_encoder):
    now = [0.0]
    host = BlockHost(BlockHostSpec(**_spec(dropout_encoder)), ttl=60.0, clock=lambda: now[0])
    answer = host.handle(_forward_request("a"), owner=1)
    assert answer["graph"] and answer["hidden"].shape == (2, 5, 32)
    host.handle(_forward_request("b"), owner=2)
    assert host.handle({"kind": "stats"}, owner=1) == {"graphs": 2, "caches": 0}
    grad = host.handle({"kind": "backward", "call": "a", "grad": torch.ones(2, 5, 32)}, owner=1)
    assert grad.shape == (2, 5, 32)
    with pytest.raises(ValueError, match="no graph for a"):
        host.handle({"kind": "backward", "call": "a", "grad": torch.ones(2, 5, 32)}, owner=1)
    host.drop_owner(2)  # its connection closed
    assert host.handle({"kind": "stats"}, owner=1)["graphs"] == 0
    host.handle(_forward_request("c"), owner=1)
    now[0] = 61.0  # nobody came back for it
    assert host.handle({"kind": "stats"}, owner=1)["graphs"] == 0
    no_graph = host.handle(_forward_request("d", grad=False), owner=1)
    assert not no_graph["graph"] and host.handle({"kind": "stats"}, owner=1)["graphs"] == 0
    with pytest.raises(ValueError, match="not client_7"):
        host.handle(_forward_request("e", adapter="client_7"), owner=1)
    with pytest.raises(ValueError, match="unknown block server request 'gossip'"):
        host.handle({"kind": "gossip"}, owner=1)


def test_a_host_steps_a_client_at_the_rate_it_is_sent(dropout_encoder):
    host = BlockHost(BlockHostSpec(**_spec(dropout_encoder)))
    host.handle({"kind": "begin_round", "reset_optimizers": True}, owner=1)
    before = host.handle({"kind": "rows"}, owner=1)
    host.handle(_forward_request("a"), owner=1)
    host.handle({"kind": "backward", "call": "a", "grad": torch.randn(2, 5, 32)}, owner=1)
    step = {"kind": "step", "adapter": "client_1", "lr": 0.1, "proximal_mu": 0.0}
    host.handle(step, owner=1)  # client 1 had no gradient: nothing moves
    assert torch.equal(host.handle({"kind": "rows"}, owner=1), before)
    host.handle({**step, "adapter": "client_0", "lr": None}, owner=1)  # skipped: grads cleared
    assert all(p.grad is None for p in host.side.parameters(0))
    host.handle(_forward_request("b"), owner=1)
    host.handle({"kind": "backward", "call": "b", "grad": torch.randn(2, 5, 32)}, owner=1)
    host.handle({**step, "adapter": "client_0"}, owner=1)
    after = host.handle({"kind": "rows"}, owner=1)
    assert torch.equal(after[1], before[1])
    # AdamW's first step moves each value with a gradient by lr (times the gradient's sign);
    # lora_A gets none while lora_B is still zero, so exactly the lora_B values moved.
    moved = (after[0] - before[0]).abs()
    assert float(moved.max()) == pytest.approx(0.1, rel=1e-4)
    b_values = sum(
        p.numel()
        for k, p in zip(host.side.keys, host.side.parameters(0), strict=True)
        if "lora_B" in k
    )
    assert int((moved > 0.099).sum()) == b_values


def _pipe_client(server: BlockServer, owner: int) -> tuple[Any, threading.Thread]:
    near, far = Pipe()
    thread = threading.Thread(target=server.serve_connection, args=(far, owner), daemon=True)
    thread.start()
    return near, thread


def _ask(connection: Any, request: dict[str, Any]) -> Any:
    send(connection, request)
    status, value = receive(connection)
    assert status == "ok", value
    return value


def test_a_client_that_goes_away_leaves_nothing_on_the_server(dropout_encoder):
    server = BlockServer()
    first, first_thread = _pipe_client(server, owner=1)
    second, second_thread = _pipe_client(server, owner=2)
    attach = {"kind": "attach", "spec": _spec(dropout_encoder), "session": "shared"}
    described = _ask(first, attach)
    assert _ask(second, attach) == described  # the same session: one frozen base
    _ask(first, _forward_request("a"))  # a graph waiting for a backward that never comes
    assert _ask(second, {"kind": "stats"})["graphs"] == 1
    first.close()  # the client died
    first_thread.join(timeout=10)
    assert _ask(second, {"kind": "stats"}) == {"graphs": 0, "caches": 0}
    send(
        second,
        {"kind": "attach", "spec": {**_spec(dropout_encoder), "k_back": 2}, "session": "shared"},
    )
    status, message = receive(second)
    assert status == "error" and "holds another model" in message
    second.close()
    second_thread.join(timeout=10)
    assert server.sessions == {}  # nobody uses it any more: freed


def test_requests_before_attaching_are_refused(dropout_encoder):
    server = BlockServer()
    connection, thread = _pipe_client(server, owner=1)
    send(connection, {"kind": "stats"})
    assert receive(connection) == ("error", "ValueError: attach before 'stats'")
    connection.close()
    thread.join(timeout=10)


def test_a_transport_says_what_is_wrong_with_its_server(monkeypatch, unused_port):
    with pytest.raises(ValueError, match=r"model\.block_server\.address is host:port"):
        ProcessTransport(BlockServerSettings(address="localhost"))
    with pytest.raises(ValueError, match=r"model\.block_server\.timeout must be > 0"):
        ProcessTransport(BlockServerSettings(timeout=0))
    monkeypatch.delenv(SERVER_KEY_ENV, raising=False)
    address = f"127.0.0.1:{unused_port}"
    with pytest.raises(RuntimeError, match=SERVER_KEY_ENV):
        ProcessTransport(BlockServerSettings(address=address)).connect()
    monkeypatch.setenv(SERVER_KEY_ENV, "right")
    with pytest.raises(BlockServerError, match="fellrec serve-blocks --address"):
        ProcessTransport(BlockServerSettings(address=address)).connect()
    threading.Thread(target=serve, args=(address, b"right"), daemon=True).start()
    monkeypatch.setenv(SERVER_KEY_ENV, "wrong")
    with pytest.raises(BlockServerError, match="refused this run's key"):
        _connect_when_listening(ProcessTransport(BlockServerSettings(address=address)))


def _connect_when_listening(transport: ProcessTransport) -> None:
    import time

    for _ in range(50):
        try:
            transport.connect()
            return
        except BlockServerError as error:
            if "refused" in str(error):
                raise
            time.sleep(0.1)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split_execution": False}, "split model"),
        ({"load_in_8bit": True}, "load_in_8bit"),
    ],
)
def test_the_process_transport_refuses_what_it_cannot_serve(options, message):
    with pytest.raises(ValueError, match=message):
        FederatedModule(transport="process", **options)


# ---------------------------------------------------------------------------------- claims
class PoisonTheHostsCopy(Callback):
    """Fills the host's copy of the server-held LoRA with NaN when round 1 starts.

    With the in-process transport that would make every loss NaN; through a block server the
    copy is never read for computing, only overwritten with the server's values at the round's
    end. (The server is built at the first request, in round 0, from the host's initial draw.)
    Runs after the loop's round start (callbacks run in order), which fetched the server's
    round-start values.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, FederatedModule) and pl_module.remote is not None
        if trainer.current_epoch != 1:
            return
        with torch.no_grad():
            for param in pl_module.remote.held_parameters():
                param.fill_(float("nan"))


def _fit(
    root: Path,
    backbone: Path,
    strategy: Strategy,
    transport: str,
    callbacks: list[Callback] | None = None,
    ckpt_path: str | None = None,
    **options: Any,
) -> tuple[dict[str, Any], FederatedModule]:
    model_options = {"recommender": "sequential", "transport": transport, **options}
    trainer, model, data, _ = tiny_run(
        root, backbone, strategy, model_options=model_options, extra_callbacks=callbacks
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    trainer.test(model, datamodule=data, verbose=False)
    return json.loads((root / RESULTS_FILE).read_text()), model


def _assert_same_run(left: dict[str, Any], right: dict[str, Any]) -> None:
    for a, b in zip(left["history"], right["history"], strict=True):
        assert a["train_loss"] == b["train_loss"]
        assert a["val"] == b["val"]
    assert left["clients"] == right["clients"]
    assert left["overall"] == right["overall"]


@pytest.mark.parametrize("strategy", [FELLRec(), FedProx(mu=0.1)], ids=["fellrec", "fedprox"])
def test_a_block_server_process_trains_exactly_as_in_process(tmp_path, dropout_encoder, strategy):
    local, local_model = _fit(tmp_path / "local", dropout_encoder, strategy, "local")
    served, served_model = _fit(
        tmp_path / "process", dropout_encoder, strategy, "process", [PoisonTheHostsCopy()]
    )
    _assert_same_run(local, served)
    assert torch.equal(local_model.client_parameters(), served_model.client_parameters())
    # The same tensors crossed, counted alike (plus the random state, on the wire only).
    assert local_model.transport is not None and served_model.transport is not None
    assert served_model.transport.stats() == local_model.transport.stats()
    assert served["resources"]["measured"] == local["resources"]["measured"]
    transport = served_model.transport
    assert isinstance(transport, ProcessTransport) and transport.wire_bytes > 0
    assert transport.request("stats") == {"graphs": 0, "caches": 0}


class KillTheServer(Callback):
    """Kills the run's own block server process at a batch of ``round_index``."""

    def __init__(self, round_index: int, batch: int) -> None:
        self.round_index, self.batch = round_index, batch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, index: int
    ) -> None:
        if trainer.current_epoch == self.round_index and index == self.batch:
            child = pl_module.transport.child_process
            child.kill()
            child.wait()


def test_a_run_whose_server_dies_stops_clearly_and_resumes_to_the_same_result(
    tmp_path, dropout_encoder
):
    # Optimizer moments kept across rounds: the server's optimizer state is checkpointed too.
    reference, _ = _fit(
        tmp_path / "local", dropout_encoder, FELLRec(), "local", reset_optimizer_each_round=False
    )
    root = tmp_path / "process"
    with pytest.raises(BlockServerError, match="stopped answering"):
        _fit(
            root,
            dropout_encoder,
            FELLRec(),
            "process",
            [KillTheServer(round_index=1, batch=3)],
            reset_optimizer_each_round=False,
        )
    assert (root / "checkpoints" / "last.ckpt").exists()
    resumed, _ = _fit(
        root,
        dropout_encoder,
        FELLRec(),
        "process",
        ckpt_path="last",
        reset_optimizer_each_round=False,
    )
    _assert_same_run(reference, resumed)


GENERATIVE = {
    "recommender": "generative",
    "prompt": PromptSettings(num_beams=2, max_new_tokens=6, max_prompt_tokens=96, item_noun="item"),
}


@pytest.mark.slow
def test_generation_through_a_block_server_equals_in_process(tmp_path):
    llama = build_tiny_llama(tmp_path / "llama", dropout=0.1)
    results = {}
    for transport in ("local", "process"):
        trainer, model, data, _ = tiny_run(
            tmp_path / transport,
            llama,
            FELLRec(),
            rounds=2,
            num_clients=2,
            model_options={**GENERATIVE, "transport": transport},
            data_options={"max_train_examples": 32, "eval_batch_size": 8},
        )
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        results[transport] = json.loads((tmp_path / transport / RESULTS_FILE).read_text())
        if transport == "process":
            # Beam search kept and reordered a KV cache per call on the server, then freed it.
            assert isinstance(model.transport, ProcessTransport)
            assert model.transport.request("stats") == {"graphs": 0, "caches": 0}
    _assert_same_run(results["local"], results["process"])


# ---------------------------------------------------------------------------------- the CLI
def test_fit_against_a_server_that_is_not_there_says_how_to_start_one(
    tmp_path, tiny_encoder_dir, unused_port, monkeypatch, capsys
):
    from fellrec.cli import main
    from test_cli import write_tiny_config

    monkeypatch.setenv(SERVER_KEY_ENV, "s3cret")
    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    address = f"127.0.0.1:{unused_port}"
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
                "--model.transport",
                "process",
                "--model.block_server.address",
                address,
            ]
        )
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert f"no fellrec block server at {address}" in err
    assert f"fellrec serve-blocks --address {address}" in err
    assert "Resume" not in err  # no round finished: nothing to resume from


@pytest.mark.slow
def test_a_long_lived_block_server_serves_runs_one_after_another(
    tmp_path, tiny_encoder_dir, monkeypatch
):
    import signal
    import subprocess
    import sys

    from fellrec.models.process_transport import LISTENING
    from test_cli import cli_environment, run_cli, write_tiny_config

    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    monkeypatch.setenv(SERVER_KEY_ENV, "s3cret")  # the server's and the runs' (run_cli's)
    env = cli_environment()
    server = subprocess.Popen(
        [sys.executable, "-m", "fellrec", "serve-blocks", "--address", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        address = server.stdout.readline().removeprefix(LISTENING).strip()
        results = {}
        for name, extra in [
            ("local", []),
            ("first", ["--model.transport", "process", "--model.block_server.address", address]),
            ("second", ["--model.transport", "process", "--model.block_server.address", address]),
        ]:
            root = tmp_path / name
            done = run_cli(
                ["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra],
                tmp_path,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            results[name] = json.loads((root / RESULTS_FILE).read_text())
        _assert_same_run(results["local"], results["first"])
        _assert_same_run(results["local"], results["second"])
        assert server.poll() is None  # still serving
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
