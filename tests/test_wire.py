"""The wire between fellrec's processes: messages without pickle, security settings, gRPC carrier.

Claims: every value fellrec sends comes back equal (tensors bit for bit, floats exactly); bytes
that are not a fellrec message raise :class:`WireError` and nothing else; settings that would
let anybody in or send clear text to a network are refused, naming what to set; a server refuses
a wrong key before reading anything, refuses oversized messages and goes on, and idle
connections (a peer that never finishes its handshake) neither delay other callers nor stay
open past the handshake timeout.
"""

from __future__ import annotations

import json
import math
import random
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import save

pytest.importorskip("grpc", reason="the wire needs grpcio (the rpc extra)")

from fellrec.wire import peers, rpc
from fellrec.wire.codec import FORMAT, FORMAT_KEY, TREE_KEY, WireError, decode, encode
from fellrec.wire.security import (
    ServerTls,
    TlsSettings,
    check_server_security,
    is_loopback,
    parse_address,
    read_pem,
)


# ---------------------------------------------------------------------------------- codec
def test_every_value_fellrec_sends_comes_back_equal():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 5, generator=generator)
    value = {
        "kind": "forward",
        "none": None,
        "flags": [True, False],
        "count": 2**40,
        "floats": [0.1, -1e-300, float("inf"), float("-inf")],
        "rng": (torch.get_rng_state(), None),
        "autocast": torch.bfloat16,
        "hidden": torch.randn(2, 3, 4, generator=generator).to(torch.bfloat16),
        "mask": torch.ones(2, 3, dtype=torch.long),
        "bits": torch.tensor([True, False]),
        "step": torch.tensor(3.0),
        "empty": torch.zeros(0, 4),
        # An optimizer's state dict: int keys, tuples, nested dicts of tensors.
        "optimizer": {
            "state": {0: {"step": torch.tensor(2.0), "exp_avg": rows[0]}},
            "param_groups": [{"betas": (0.9, 0.999), "params": [0, 1], "foreach": None}],
        },
        "$odd": "a key that looks like a tag",
    }
    back = decode(encode(value))
    assert back.keys() == value.keys()
    for key in ("kind", "none", "flags", "count", "autocast", "$odd"):
        assert back[key] == value[key]
    assert back["floats"] == value["floats"]
    assert torch.equal(back["rng"][0], value["rng"][0]) and back["rng"][1] is None
    for key in ("hidden", "mask", "bits", "step", "empty"):
        assert back[key].dtype == value[key].dtype and torch.equal(back[key], value[key])
    state = back["optimizer"]["state"]
    assert list(state) == [0] and torch.equal(state[0]["exp_avg"], rows[0])
    assert back["optimizer"]["param_groups"] == [
        {"betas": (0.9, 0.999), "params": [0, 1], "foreach": None}
    ]
    assert math.isnan(decode(encode(float("nan"))))


def test_a_view_crosses_as_its_own_elements_and_received_tensors_are_writable():
    big = torch.arange(1_000_000, dtype=torch.float32)
    data = encode([big[10:20], big[10:20]])  # the same memory twice
    assert len(data) < 1000
    first, second = decode(data)
    first.add_(1)  # its own buffer: nothing else changes
    assert torch.equal(second, big[10:20]) and torch.equal(first, big[10:20] + 1)


def test_values_the_wire_does_not_carry_are_refused_when_sent():
    with pytest.raises(TypeError, match="does not carry object"):
        encode({"x": object()})
    with pytest.raises(TypeError, match="does not carry set"):
        encode({1, 2})


def _with_tree(tree: Any, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    return save(tensors or {}, metadata={FORMAT_KEY: FORMAT, TREE_KEY: json.dumps(tree)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x00" * 7, "too short"),
        ((10**9).to_bytes(8, "little") + b"{}", "claims 1000000000 bytes"),
        ((2).to_bytes(8, "little") + b"{]", "malformed"),
        (save({"a": torch.zeros(2)}), "not a fellrec wire message"),
        (save({}, metadata={FORMAT_KEY: "0", TREE_KEY: "1"}), "format '0'"),
        (_with_tree({"$tensor": "7"}), "no tensor named '7'"),
        (_with_tree({"$pickle": "x"}), "unknown tag '\\$pickle'"),
        (_with_tree({"$dtype": "Tensor"}), "not a torch dtype"),
        (_with_tree({"$dtype": "float32", "x": 1}), "tagged value with other keys"),
        (_with_tree({"$dict": [[[1], 2]]}), "a list as a dict key"),
        (_with_tree({"$dict": [1]}), "not a \\[key, value\\] pair"),
        (
            save({}, metadata={FORMAT_KEY: FORMAT, TREE_KEY: "[" * 100_000 + "]" * 100_000}),
            "nest too deeply",
        ),
    ],
    # Named, not derived from the bytes: safetensors orders the metadata differently from one
    # process to the next, and parallel test workers must collect the same ids.
    ids=[
        "empty",
        "seven-bytes",
        "header-too-long",
        "malformed-header",
        "plain-safetensors",
        "old-format",
        "missing-tensor",
        "pickle-tag",
        "not-a-dtype",
        "tag-with-other-keys",
        "list-as-key",
        "not-a-pair",
        "too-deep",
    ],
)
def test_bytes_that_are_not_a_fellrec_message_raise_a_wire_error(data, message):
    with pytest.raises(WireError, match=message):
        decode(data)


def test_a_message_cut_short_or_with_flipped_bytes_raises_only_wire_errors():
    data = encode({"hidden": torch.randn(4, 8), "kind": "forward", "rng": (torch.zeros(3),)})
    rng = random.Random(0)
    outcomes = {"refused": 0, "read": 0}
    for trial in range(300):
        broken = bytearray(data[: rng.randrange(len(data))] if trial % 3 == 0 else data)
        for _ in range(rng.randrange(1, 8)):
            if broken:
                broken[rng.randrange(len(broken))] = rng.randrange(256)
        try:
            decode(bytes(broken))  # flipped tensor bytes still make a message: that is fine
            outcomes["read"] += 1
        except WireError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


# ---------------------------------------------------------------------------------- security
def test_addresses_and_loopback():
    assert parse_address("127.0.0.1:7200") == ("127.0.0.1", 7200)
    assert parse_address("[::1]:7200") == ("::1", 7200)
    for bad in ("7200", "host:", ":7200", "host:port"):
        with pytest.raises(ValueError, match="the setting is host:port"):
            parse_address(bad, "the setting")
    assert is_loopback("localhost") and is_loopback("127.0.0.5") and is_loopback("::1")
    assert not is_loopback("10.0.0.1") and not is_loopback("blocks.example.org")


def test_tls_settings_that_do_not_go_together_are_named(tmp_path):
    TlsSettings().validate("x.tls")
    with pytest.raises(ValueError, match=r"x\.tls\.certificate and x\.tls\.key go together"):
        TlsSettings(ca="ca.crt", certificate="c.pem").validate("x.tls")
    with pytest.raises(ValueError, match=r"x\.tls\.certificate is set but x\.tls\.ca is not"):
        TlsSettings(certificate="c.pem", key="c.key").validate("x.tls")
    with pytest.raises(ValueError, match=r"x\.tls\.server_name needs x\.tls\.ca"):
        TlsSettings(server_name="blocks").validate("x.tls")
    with pytest.raises(ValueError, match=r"x\.tls\.ca: cannot read .*missing\.crt"):
        TlsSettings(ca=str(tmp_path / "missing.crt")).read("x.tls")
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ValueError, match=r"--tls-cert: .*not.pem is not a PEM file"):
        read_pem(tmp_path / "not.pem", "--tls-cert")


def test_a_server_must_know_its_callers_and_keep_clear_text_on_loopback():
    tls = ServerTls("s.pem", "s.key")
    check_server_security("127.0.0.1", None, b"k", False, "KEY")
    check_server_security("0.0.0.0", tls, b"k", False, "KEY")
    check_server_security("0.0.0.0", ServerTls("s.pem", "s.key", "ca.crt"), None, False, "KEY")
    check_server_security("10.0.0.1", None, b"k", True, "KEY")
    with pytest.raises(ValueError, match=r"shared key in KEY.*--tls-client-ca"):
        check_server_security("127.0.0.1", tls, None, False, "KEY")
    with pytest.raises(ValueError, match=r"not loopback: serve TLS .*--insecure"):
        check_server_security("0.0.0.0", None, b"k", False, "KEY")


# ---------------------------------------------------------------------------------- rpc
def _echo(request: bytes, context: Any) -> bytes:
    return rpc.answer_to(request, lambda value: value, "echo")


def _echo_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield _echo(request, context)


@pytest.fixture
def echo_server() -> Iterator[rpc.RunningServer]:
    running = rpc.start_server(
        "127.0.0.1:0",
        "test.Echo",
        unary={"Echo": _echo},
        streams={"Stream": _echo_stream},
        key=b"right",
        max_message_bytes=1 << 20,
        handshake_timeout=1.0,
    )
    yield running
    running.stop()


def _peer(address: str, key: bytes | None) -> peers.Peer:
    return peers.Peer(
        what="echo server",
        address=address,
        address_setting="echo.address",
        tls=TlsSettings(),
        tls_setting="echo.tls",
        key=key,
        key_variable="ECHO_KEY",
        start="echo --address",
    )


def test_a_server_answers_with_the_key_and_refuses_without_it(echo_server):
    peer = _peer(echo_server.address, b"right")
    answer = peers.call_once(peer, "/test.Echo/Echo", encode({"x": torch.ones(2)}))
    assert torch.equal(rpc.read_answer(answer, "echo")["x"], torch.ones(2))
    with pytest.raises(ConnectionError, match=r"refused this caller's key.*ECHO_KEY"):
        peers.call_once(_peer(echo_server.address, b"wrong"), "/test.Echo/Echo", encode(1))
    with pytest.raises(ConnectionError, match=r"nothing proves this caller.*ECHO_KEY"):
        peers.call_once(_peer(echo_server.address, None), "/test.Echo/Echo", encode(1))
    # A malformed request gets an error answer, not a crash.
    garbage = peers.call_once(peer, "/test.Echo/Echo", b"\x00garbage")
    with pytest.raises(rpc.RemoteError, match="WireError"):
        rpc.read_answer(garbage, "echo")


def test_nobody_listening_says_how_to_start_the_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ConnectionError, match=f"no echo server at {address} .*`echo --address`"):
        peers.call_once(_peer(address, b"k"), "/test.Echo/Echo", encode(1))


def test_an_oversized_message_is_refused_and_the_server_goes_on(echo_server):
    peer = _peer(echo_server.address, b"right")
    stream = peers.StreamCall(
        peer.channel(max_message_bytes=8 << 20), "/test.Echo/Stream", peer.metadata
    )
    assert rpc.read_answer(stream.ask(encode("a"), 10), "echo") == "a"
    with pytest.raises(Exception) as refused:
        stream.ask(b"x" * (2 << 20), 10)
    assert refused.value.code().name == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
    assert "refused a call" in peer.explain(refused.value)
    with pytest.raises(type(refused.value)):
        stream.ask(encode("b"), 10)  # that stream is over ...
    stream.close()
    answer = peers.call_once(peer, "/test.Echo/Echo", encode("c"))  # ... the server is not
    assert rpc.read_answer(answer, "echo") == "c"


def test_idle_connections_neither_delay_a_caller_nor_outlive_the_handshake_timeout(echo_server):
    host, port = parse_address(echo_server.address)
    idle = [socket.create_connection((host, port)) for _ in range(50)]
    try:
        started = time.monotonic()
        answer = peers.call_once(_peer(echo_server.address, b"right"), "/test.Echo/Echo", encode(1))
        assert rpc.read_answer(answer, "echo") == 1
        assert time.monotonic() - started < 3.0
        # The server drops a connection that did not finish its handshake in 1 s (a clear-text
        # server sends its HTTP/2 settings first, then closes).
        idle[0].settimeout(10.0)
        while idle[0].recv(1024):
            pass
        assert time.monotonic() - started < 8.0
    finally:
        for connection in idle:
            connection.close()


def test_without_grpc_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(ImportError, match=r"model\.transport: process needs gRPC .*fellrec\[rpc\]"):
        rpc.grpc_module("model.transport: process")
