"""The block server: the middle blocks in their own process (``model.transport: process``).

Claims: training, evaluation and generation through a block server process equal the in-process
transport number for number (dropout on, so the random state really crosses), over mutual TLS
with certificates made at test time, over TLS with a shared key, and through a run's own child
server on loopback; the server's LoRA is what the federation aggregates (the host's own copy is
poisoned and never read); a run whose server dies stops with a clear error and resumes from its
checkpoint to the uninterrupted result; a client that goes away leaves nothing behind on the
server. On the wire: a run with a missing or wrong certificate or key is refused with a message
naming the setting; garbage and oversized messages are refused without crashing the server or
growing its memory; idle connections do not delay a run that attaches.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

pytest.importorskip("grpc", reason="model.transport: process needs grpcio (the rpc extra)")
pytest.importorskip("cryptography", reason="the tests make TLS certificates with cryptography")

from conftest import build_tiny_encoder, build_tiny_llama
from federation_helpers import tiny_run
from fellrec.federation.strategies import FedProx, FELLRec, Strategy
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_encoder
from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.process_transport import (
    LISTENING,
    SERVER_KEY_ENV,
    SESSION_METHOD,
    BlockServerError,
    BlockServerSettings,
    ProcessTransport,
)
from fellrec.models.prompts import PromptSettings
from fellrec.models.server_side import ServerSide
from fellrec.models.split_plan import plan_split
from fellrec.serving import block_server
from fellrec.serving.block_host import BlockHost, BlockHostSpec
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.host.server_blocks import RemoteServerBlocks
from fellrec.training.records.results import RESULTS_FILE
from fellrec.wire import peers, rpc
from fellrec.wire.codec import encode
from fellrec.wire.security import TlsSettings
from flower_credentials import TlsFiles, make_client_certificate, make_tls
from test_cli import cli_environment

KEY = "s3cret"


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


# ---------------------------------------------------------------------------------- TLS servers
@dataclass(frozen=True)
class Credentials:
    """A CA with the server's certificate and a run's client certificate, and an intruder's
    certificate from another CA (all PEM files made at test time)."""

    tls: TlsFiles
    run: tuple[Path, Path]
    other: TlsFiles
    intruder: tuple[Path, Path]

    def settings(self, address: str, **changes: Any) -> BlockServerSettings:
        """A run's settings for mutual TLS to ``address`` (``changes`` to its TLS fields)."""
        fields = {"ca": str(self.tls.ca), "certificate": str(self.run[0]), "key": str(self.run[1])}
        return BlockServerSettings(address=address, tls=TlsSettings(**{**fields, **changes}))


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> Credentials:
    directory = tmp_path_factory.mktemp("tls")
    tls = make_tls(directory / "ca")
    other = make_tls(directory / "other-ca")
    return Credentials(
        tls,
        make_client_certificate(tls, directory / "clients", "run"),
        other,
        make_client_certificate(other, directory / "intruders", "intruder"),
    )


class ServerProcess:
    """``fellrec serve-blocks`` as a process of its own, on a free loopback port.

    Args:
        args: Its flags besides ``--address``.
        key: Its ``FELLREC_SERVER_KEY`` (None: unset).
    """

    def __init__(self, args: list[str], key: str | None = None) -> None:
        env = cli_environment()
        env.pop(SERVER_KEY_ENV, None)
        if key is not None:
            env[SERVER_KEY_ENV] = key
        command = [sys.executable, "-m", "fellrec", "serve-blocks", "--address", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            [*command, *args], env=env, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith(LISTENING), f"serve-blocks did not start: {line!r}"
        self.address = line.removeprefix(LISTENING).strip()

    def rss_bytes(self) -> int:
        """Its resident memory (Linux)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def _tls_flags(tls: TlsFiles, mutual: bool) -> list[str]:
    flags = ["--tls-cert", str(tls.certificate), "--tls-key", str(tls.key)]
    return [*flags, "--tls-client-ca", str(tls.ca)] if mutual else flags


@pytest.fixture(scope="module")
def mtls_server(credentials) -> Iterator[ServerProcess]:
    """A block server that asks every run for a client certificate (no shared key)."""
    server = ServerProcess(
        [
            *_tls_flags(credentials.tls, mutual=True),
            "--max-message-mb",
            "4",
            "--handshake-timeout",
            "2",
        ]
    )
    yield server
    server.stop()


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


@pytest.fixture
def key_server() -> Iterator[tuple[block_server.BlockServer, str]]:
    """A block server in this process, on loopback with a shared key."""
    server, running = block_server.start("127.0.0.1:0", KEY.encode())
    yield server, running.address
    running.stop()


def _connect(address: str, settings: BlockServerSettings | None = None) -> peers.StreamCall:
    """A raw connection (a run's stream) to a block server with the shared key."""
    tls = settings.tls if settings is not None else TlsSettings()
    peer = peers.Peer("block server", address, "address", tls, "tls", KEY.encode(), "K", "")
    return peers.StreamCall(peer.channel(), SESSION_METHOD, peer.metadata)


def _ask(connection: peers.StreamCall, request: dict[str, Any]) -> Any:
    return rpc.read_answer(connection.ask(encode(request), 60), "block server")


def _eventually(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_a_client_that_goes_away_leaves_nothing_on_the_server(dropout_encoder, key_server):
    server, address = key_server
    first, second = _connect(address), _connect(address)
    attach = {"kind": "attach", "spec": _spec(dropout_encoder), "session": "shared"}
    described = _ask(first, attach)
    assert _ask(second, attach) == described  # the same session: one frozen base
    _ask(first, _forward_request("a"))  # a graph waiting for a backward that never comes
    assert _ask(second, {"kind": "stats"})["graphs"] == 1
    first.close()  # the client died
    _eventually(lambda: _ask(second, {"kind": "stats"}) == {"graphs": 0, "caches": 0})
    other_model = {"kind": "attach", "spec": {**_spec(dropout_encoder), "k_back": 2}}
    with pytest.raises(rpc.RemoteError, match="holds another model"):
        _ask(second, {**other_model, "session": "shared"})
    second.close()
    _eventually(lambda: server.sessions == {})  # nobody uses it any more: freed


def test_a_connection_cannot_attach_to_another_runs_session(dropout_encoder, key_server):
    server, address = key_server
    run, other = _connect(address), _connect(address)
    _ask(run, {"kind": "attach", "spec": _spec(dropout_encoder)})  # its own session
    _ask(run, _forward_request("a"))
    (own,) = server.sessions
    # Naming the run's session (or any connection's) gives a session of its own, not the run's.
    _ask(other, {"kind": "attach", "spec": _spec(dropout_encoder), "session": own})
    assert _ask(other, {"kind": "stats"}) == {"graphs": 0, "caches": 0}
    assert _ask(run, {"kind": "stats"}) == {"graphs": 1, "caches": 0}
    assert len(server.sessions) == 2
    run.close()
    other.close()


def test_requests_before_attaching_and_malformed_ones_are_answered_with_errors(key_server):
    _, address = key_server
    connection = _connect(address)
    with pytest.raises(rpc.RemoteError, match="ValueError: attach before 'stats'"):
        _ask(connection, {"kind": "stats"})
    with pytest.raises(rpc.RemoteError, match="a dict with a 'kind'"):
        _ask(connection, ["stats"])  # type: ignore[arg-type]
    with pytest.raises(rpc.RemoteError, match="WireError: malformed message"):
        rpc.read_answer(connection.ask(b"\x10" + bytes(64), 60), "block server")
    assert _ask(connection, {"kind": "hello"})["server"] == "fellrec block server"
    connection.close()


def test_settings_that_cannot_work_are_refused_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"model\.block_server\.address is host:port"):
        ProcessTransport(BlockServerSettings(address="localhost"))
    with pytest.raises(ValueError, match=r"model\.block_server\.timeout must be > 0"):
        ProcessTransport(BlockServerSettings(timeout=0))
    with pytest.raises(ValueError, match=r"model\.block_server\.max_message_mb must be > 0"):
        ProcessTransport(BlockServerSettings(max_message_mb=4096))
    with pytest.raises(
        ValueError, match=r"10\.0\.0\.1:7200 is not loopback: set model\.block_server\.tls\.ca"
    ):
        ProcessTransport(BlockServerSettings(address="10.0.0.1:7200"))
    ProcessTransport(BlockServerSettings(address="10.0.0.1:7200", insecure=True))
    with pytest.raises(
        ValueError, match=r"model\.block_server\.tls is set but model\.block_server\.address is not"
    ):
        ProcessTransport(BlockServerSettings(tls=TlsSettings(ca="ca.crt")))
    with pytest.raises(
        ValueError,
        match=r"tls\.certificate and model\.block_server\.tls\.key go together",
    ):
        ProcessTransport(
            BlockServerSettings(address="127.0.0.1:1", tls=TlsSettings(ca="c", certificate="x"))
        )
    missing = BlockServerSettings(
        address="127.0.0.1:1", tls=TlsSettings(ca=str(tmp_path / "ca.crt"))
    )
    with pytest.raises(ValueError, match=r"model\.block_server\.tls\.ca: cannot read"):
        ProcessTransport(missing)


def test_a_transport_says_what_is_wrong_with_its_server(monkeypatch, unused_port, key_server):
    address = f"127.0.0.1:{unused_port}"
    monkeypatch.delenv(SERVER_KEY_ENV, raising=False)
    with pytest.raises(
        BlockServerError,
        match=f"nothing proves this caller.*{SERVER_KEY_ENV}.*block_server\\.tls\\.certificate",
    ):
        ProcessTransport(BlockServerSettings(address=address)).connect()
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)
    with pytest.raises(BlockServerError, match=f"fellrec serve-blocks --address {address}"):
        ProcessTransport(BlockServerSettings(address=address)).connect()
    _, running = key_server
    monkeypatch.setenv(SERVER_KEY_ENV, "wrong")
    with pytest.raises(BlockServerError, match=f"refused this caller's key.*{SERVER_KEY_ENV}"):
        ProcessTransport(BlockServerSettings(address=running)).connect()


def test_a_run_without_the_right_certificate_is_refused_naming_the_setting(
    credentials, mtls_server, monkeypatch
):
    address = mtls_server.address
    right = ProcessTransport(credentials.settings(address))
    right.connect()
    right.close()
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)  # a key alone does not get past mutual TLS
    cases = [
        (
            {"certificate": None, "key": None},
            r"asks for a client certificate; set model\.block_server\.tls\.certificate",
        ),
        (
            {"certificate": str(credentials.intruder[0]), "key": str(credentials.intruder[1])},
            r"does not accept this caller's certificate \(model\.block_server\.tls\.certificate",
        ),
        (
            {"ca": str(credentials.other.ca)},
            r"certificate that model\.block_server\.tls\.ca \(.*other-ca.*\) does not verify",
        ),
        (
            {"server_name": "blocks.example.org"},
            r"not made out to model\.block_server\.tls\.server_name \(blocks\.example\.org\)",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(BlockServerError, match=message):
            ProcessTransport(credentials.settings(address, **changes)).connect()
    clear = BlockServerSettings(address=address)
    with pytest.raises(BlockServerError, match=r"it serves TLS.*set model\.block_server\.tls\.ca"):
        ProcessTransport(clear).connect()
    assert mtls_server.process.poll() is None  # refusing them cost the server nothing


def test_idle_connections_do_not_delay_a_run_and_are_dropped(
    credentials, mtls_server, dropout_encoder
):
    host, port = mtls_server.address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(50)]
    try:
        started = time.monotonic()
        transport = ProcessTransport(credentials.settings(mtls_server.address))
        transport.bind(
            lambda: _spec(dropout_encoder), lambda: "client_0", lambda: False, lambda d: None
        )
        assert transport.request("stats") == {"graphs": 0, "caches": 0}  # attached
        attached = time.monotonic() - started
        assert attached < 15.0, f"a run took {attached:.1f} s to attach past 50 idle connections"
        transport.close()
        # The server drops them once their handshake is 2 s late (--handshake-timeout 2).
        for connection in idle[:5]:
            connection.settimeout(15.0)
            assert connection.recv(1024) == b""
        assert time.monotonic() - started < 20.0
    finally:
        for connection in idle:
            connection.close()


def test_garbage_and_oversized_messages_are_refused_without_crash_or_growth(
    credentials, mtls_server
):
    host, port = mtls_server.address.rsplit(":", 1)
    rng = random.Random(0)
    for _ in range(20):  # not TLS at all
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(bytes(rng.randrange(256) for _ in range(4096)))
    settings = credentials.settings(mtls_server.address)
    connection = _connect(mtls_server.address, settings)
    _ask(connection, {"kind": "hello"})
    before = mtls_server.rss_bytes()
    for _ in range(200):  # inside TLS, as a run's messages
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048)))
        with pytest.raises(rpc.RemoteError, match="WireError"):
            rpc.read_answer(connection.ask(garbage, 60), "block server")
    assert _ask(connection, {"kind": "hello"})["server"] == "fellrec block server"
    connection.close()
    for _ in range(20):  # over --max-message-mb 4: refused before it is read
        oversized = _connect(mtls_server.address, settings)
        with pytest.raises(Exception) as refused:
            oversized.ask(b"\x00" * (5 << 20), 60)
        assert refused.value.code().name == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
        oversized.close()
    grown = mtls_server.rss_bytes() - before
    assert grown < 48 << 20, f"the server grew by {grown / 2**20:.0f} MiB"
    ProcessTransport(settings).connect()  # still serving
    assert mtls_server.process.poll() is None


def test_serve_blocks_refuses_to_let_anybody_in_or_speak_clear_text_to_a_network(
    monkeypatch, capsys
):
    monkeypatch.delenv(SERVER_KEY_ENV, raising=False)
    for argv, message in [
        (["--address", "127.0.0.1:0"], f"shared key in {SERVER_KEY_ENV}"),
        (
            ["--address", "127.0.0.1:0", "--tls-cert", "s.pem"],
            "--tls-cert and --tls-key go together",
        ),
        (
            ["--address", "127.0.0.1:0", "--tls-client-ca", "ca.crt"],
            "--tls-client-ca needs --tls-cert",
        ),
    ]:
        with pytest.raises(SystemExit) as stop:
            block_server.main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)
    with pytest.raises(SystemExit):
        block_server.main(["--address", "0.0.0.0:0"])
    assert "is not loopback: serve TLS (--tls-cert and --tls-key), or pass --insecure" in (
        capsys.readouterr().err
    )


@pytest.fixture
def unused_port() -> int:
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
        assert isinstance(pl_module, FederatedModule) and isinstance(
            pl_module.server_blocks, RemoteServerBlocks
        )
        if trainer.current_epoch != 1:
            return
        with torch.no_grad():
            for param in pl_module.server_blocks.held_parameters():
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


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, dropout_encoder) -> dict[str, tuple[dict[str, Any], Any]]:
    """The in-process reference of each strategy (results, the model), made once."""
    runs: dict[str, tuple[dict[str, Any], Any]] = {}
    for name, strategy in [("fellrec", FELLRec()), ("fedprox", FedProx(mu=0.1))]:
        runs[name] = _fit(
            tmp_path_factory.mktemp(f"local-{name}"), dropout_encoder, strategy, "local"
        )
    return runs


@pytest.mark.parametrize(
    ("strategy", "wire"),
    [("fellrec", "mutual-tls"), ("fedprox", "mutual-tls"), ("fellrec", "child")],
)
def test_a_block_server_process_trains_exactly_as_in_process(
    tmp_path, dropout_encoder, local_runs, credentials, mtls_server, strategy, wire
):
    local, local_model = local_runs[strategy]
    # Over mutual TLS to a running `fellrec serve-blocks`, or through the run's own child server
    # (loopback, clear text, a one-time key).
    settings = credentials.settings(mtls_server.address) if wire == "mutual-tls" else None
    served, served_model = _fit(
        tmp_path / "process",
        dropout_encoder,
        FELLRec() if strategy == "fellrec" else FedProx(mu=0.1),
        "process",
        [PoisonTheHostsCopy()],
        block_server=settings,
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
    transport.close()


def test_the_hidden_defence_crosses_a_block_server_as_in_process(
    tmp_path, dropout_encoder, local_runs
):
    """model.hidden_defence lives on the client's side of every transport: the same noise."""
    defence = HiddenDefence(clip=1.0, noise=0.2, seed=5)
    local, local_model = _fit(
        tmp_path / "local", dropout_encoder, FELLRec(), "local", hidden_defence=defence
    )
    served, served_model = _fit(
        tmp_path / "process", dropout_encoder, FELLRec(), "process", hidden_defence=defence
    )
    _assert_same_run(local, served)
    assert torch.equal(local_model.client_parameters(), served_model.client_parameters())
    # The defence changed what trained (the undefended reference is another run).
    undefended, _ = local_runs["fellrec"]
    assert local["history"][0]["train_loss"] != undefended["history"][0]["train_loss"]
    assert served_model.transport is not None
    served_model.transport.close()


class KillTheServer(Callback):
    """Kills the block server process at a batch of ``round_index``."""

    def __init__(self, server: ServerProcess, round_index: int, batch: int) -> None:
        self.server, self.round_index, self.batch = server, round_index, batch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, index: int
    ) -> None:
        if trainer.current_epoch == self.round_index and index == self.batch:
            self.server.kill()


def test_a_run_whose_server_dies_stops_clearly_and_resumes_to_the_same_result(
    tmp_path, dropout_encoder, credentials, monkeypatch
):
    # Optimizer moments kept across rounds: the server's optimizer state is checkpointed too.
    reference, _ = _fit(
        tmp_path / "local", dropout_encoder, FELLRec(), "local", reset_optimizer_each_round=False
    )
    # TLS with a shared key (no client certificates) this time.
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)
    server = ServerProcess(_tls_flags(credentials.tls, mutual=False), key=KEY)
    root = tmp_path / "process"
    settings = BlockServerSettings(
        address=server.address, tls=TlsSettings(ca=str(credentials.tls.ca))
    )
    try:
        lost = r"stopped answering \(the connection to the fellrec block server at .* was lost"
        with pytest.raises(BlockServerError, match=lost):
            _fit(
                root,
                dropout_encoder,
                FELLRec(),
                "process",
                [KillTheServer(server, round_index=1, batch=3)],
                reset_optimizer_each_round=False,
                block_server=settings,
            )
        assert (root / "checkpoints" / "last.ckpt").exists()
        server = ServerProcess(_tls_flags(credentials.tls, mutual=False), key=KEY)  # back
        resumed, _ = _fit(
            root,
            dropout_encoder,
            FELLRec(),
            "process",
            ckpt_path="last",
            reset_optimizer_each_round=False,
            block_server=BlockServerSettings(address=server.address, tls=settings.tls),
        )
    finally:
        server.stop()
    _assert_same_run(reference, resumed)


GENERATIVE = {
    "recommender": "generative",
    "prompt": PromptSettings(num_beams=2, max_new_tokens=6, max_prompt_tokens=96, item_noun="item"),
}


@pytest.mark.slow
def test_generation_through_a_block_server_equals_in_process(tmp_path, credentials, mtls_server):
    llama = build_tiny_llama(tmp_path / "llama", dropout=0.1)
    results = {}
    for transport in ("local", "process"):
        over_tls = credentials.settings(mtls_server.address) if transport == "process" else None
        trainer, model, data, _ = tiny_run(
            tmp_path / transport,
            llama,
            FELLRec(),
            rounds=2,
            num_clients=2,
            model_options={**GENERATIVE, "transport": transport, "block_server": over_tls},
            data_options={"max_train_examples": 32, "eval_batch_size": 8},
        )
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        results[transport] = json.loads((tmp_path / transport / RESULTS_FILE).read_text())
        if transport == "process":
            # Beam search kept and reordered a KV cache per call on the server, then freed it.
            assert isinstance(model.transport, ProcessTransport)
            assert model.transport.request("stats") == {"graphs": 0, "caches": 0}
            model.transport.close()
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
    tmp_path, tiny_encoder_dir, credentials, monkeypatch
):
    from test_cli import run_cli, write_tiny_config

    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)  # the runs' (run_cli's): TLS with a shared key
    server = ServerProcess(_tls_flags(credentials.tls, mutual=False), key=KEY)
    try:
        results = {}
        over_tls = [
            "--model.transport",
            "process",
            "--model.block_server.address",
            server.address,
            "--model.block_server.tls.ca",
            str(credentials.tls.ca),
        ]
        for name, extra in [("local", []), ("first", over_tls), ("second", over_tls)]:
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
        assert server.process.poll() is None  # still serving
        # A run without the CA is told which setting is missing, in one line.
        root = tmp_path / "no-ca"
        refused = run_cli(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.default_root_dir",
                str(root),
                *over_tls[:4],
            ],
            tmp_path,
            timeout=600,
        )
        assert refused.returncode == 1
        assert "it serves TLS" in refused.stderr and "model.block_server.tls.ca" in refused.stderr
    finally:
        server.stop()


def test_a_host_drops_out_at_the_runs_base_dropout(dropout_encoder):
    from torch import nn

    host = BlockHost(BlockHostSpec(**_spec(dropout_encoder), base_dropout=0.0))
    rates = {m.p for m in host.adapters.model.modules() if isinstance(m, nn.Dropout)}
    # LoRA's own dropout (model.lora.dropout) is not the base's.
    assert rates == {0.0, LoRASettings().dropout}
    old = BlockHost(BlockHostSpec(**_spec(dropout_encoder)))  # a run that sends no base_dropout
    assert {m.p for m in old.adapters.model.modules() if isinstance(m, nn.Dropout)} != rates
