"""The client worker: a long-lived process answering a SuperNode's messages for its ClientApps.

Its connection is the block server's wire (``fellrec.wire``): no unpickling, a key and/or client
certificates, TLS off loopback; idle connections do not hold up a ClientApp's message.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("flwr", reason="Flower (the flower extra) needs Python >= 3.11")

from fellrec.deploy.client_requests import ClientRequest
from fellrec.deploy.client_session import answer
from fellrec.deploy.client_worker import (
    ANSWER_METHOD,
    KEY_ENV,
    ask_worker,
    parse_address,
    serve,
    worker_key,
    worker_tls,
)
from fellrec.deploy.run_config import RunSettings
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.wire import peers, rpc
from fellrec.wire.security import TlsSettings
from flower_credentials import make_client_certificate, make_tls
from flower_deployment import free_port
from test_cli import write_tiny_config

KEY = b"test-key"


def test_addresses_and_the_key_are_checked(monkeypatch):
    assert parse_address("127.0.0.1:7101") == ("127.0.0.1", 7101)
    for bad in ("7101", "host:", ":7101", "host:port"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(RuntimeError, match=KEY_ENV):
        worker_key()
    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert worker_key() == b"s3cret"


def test_a_request_crosses_as_plain_values_and_a_malformed_one_is_named():
    request = ClientRequest(
        "train",
        RunSettings(("a.yaml", "b.yaml"), ("--seed_everything", "3")),
        2,
        parameters=torch.arange(4.0),
        config=ClientRoundConfig(round=1, lr_scale=0.5, proximal_mu=0.01, trains=False),
        stage="test",
        selection=(1, 3),
        silo="silos/client_2/interactions.csv",
    )
    back = ClientRequest.from_wire(request.to_wire())
    assert torch.equal(back.parameters, request.parameters)
    # Compared without the tensor: from Python 3.13 a dataclass compares field by field, and
    # `tensor == tensor` has no single truth value.
    assert dataclasses.replace(back, parameters=None) == dataclasses.replace(
        request, parameters=None
    )
    wire = request.to_wire()
    for change, message in [
        ({"client": "2"}, "'client' is str"),
        ({"client": True}, "'client' is bool"),
        ({"settings": {"config_files": [1], "overrides": []}}, "lists of strings"),
        ({"selection": [1]}, "selected round, rounds run"),
        ({"parameters": [1.0]}, "'parameters' is list"),
    ]:
        with pytest.raises(ValueError, match=message):
            ClientRequest.from_wire({**wire, **change})
    with pytest.raises(ValueError, match="without its 'kind'"):
        ClientRequest.from_wire({k: v for k, v in wire.items() if k != "kind"})


def test_the_node_config_names_the_workers_tls():
    tls, insecure = worker_tls(
        {"fellrec-worker-tls-ca": "ca.crt", "fellrec-worker-tls-cert": "n.pem", "x": 1}
    )
    assert tls == TlsSettings(ca="ca.crt", certificate="n.pem") and not insecure
    assert worker_tls({"fellrec-worker-insecure": "true"}) == (TlsSettings(), True)
    with pytest.raises(ConnectionError, match=r"not on loopback.*fellrec-worker-tls-ca"):
        ask_worker("10.0.0.1:7101", ClientRequest("describe", RunSettings(("x",)), 0), key=KEY)


def test_no_worker_at_the_address_is_a_clear_error():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"no fellrec client worker at {address}"):
        ask_worker(address, ClientRequest("describe", RunSettings(("x.yaml",)), 0), key=KEY)


def test_a_failed_request_comes_back_as_its_error_and_the_worker_goes_on():
    address = f"127.0.0.1:{free_port()}"
    served: list[int] = []
    worker = threading.Thread(target=lambda: served.append(serve(address, KEY, max_requests=2)))
    worker.start()
    bogus = ClientRequest("predict", RunSettings(("x.yaml",)), 0)
    deadline = time.monotonic() + 10
    while True:  # the listener may take a moment to bind
        try:
            with pytest.raises(RuntimeError, match="request kind must be one of"):
                ask_worker(address, bogus, key=KEY)
            break
        except ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with pytest.raises(ConnectionError, match=f"refused this caller's key.*{KEY_ENV}"):
        ask_worker(address, bogus, key=b"wrong")  # refused; the worker keeps serving
    with pytest.raises(RuntimeError, match="a train request needs parameters"):
        ask_worker(address, ClientRequest("train", RunSettings(("x.yaml",)), 0), key=KEY)
    worker.join(10)
    assert served == [2]


def test_idle_connections_and_garbage_do_not_hold_up_a_message():
    address = f"127.0.0.1:{free_port()}"
    served: list[int] = []
    worker = threading.Thread(target=lambda: served.append(serve(address, KEY, max_requests=3)))
    worker.start()
    host, port = parse_address(address)
    deadline = time.monotonic() + 10
    while True:  # the listener may take a moment to bind
        try:
            idle = [socket.create_connection((host, port)) for _ in range(50)]
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    try:
        started = time.monotonic()
        bogus = ClientRequest("predict", RunSettings(("x.yaml",)), 0)
        with pytest.raises(RuntimeError, match="request kind must be one of"):
            ask_worker(address, bogus, key=KEY)
        assert time.monotonic() - started < 5.0
        peer = peers.Peer("worker", address, "a", TlsSettings(), "t", KEY, KEY_ENV, "")
        for garbage in (b"\x00" * 9, b"not a message at all"):
            with pytest.raises(rpc.RemoteError, match="WireError"):
                rpc.read_answer(peers.call_once(peer, ANSWER_METHOD, garbage), "worker")
    finally:
        for connection in idle:
            connection.close()
    worker.join(10)
    assert served == [3]


def test_a_worker_process_answers_as_this_process_would_and_loads_the_model_once(
    tmp_path, tiny_encoder_dir
):
    settings = RunSettings((str(write_tiny_config(tmp_path, tiny_encoder_dir)),))
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "worker.log"
    # Mutual TLS and no key: the SuperNode's certificate is what lets it in.
    credentials = make_tls(tmp_path / "ca")
    node_cert, node_key = make_client_certificate(credentials, tmp_path / "nodes", "node-1")
    intruder_cert, intruder_key = make_client_certificate(
        make_tls(tmp_path / "other-ca"), tmp_path / "intruders", "intruder"
    )
    tls = TlsSettings(ca=str(credentials.ca), certificate=str(node_cert), key=str(node_key))
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    flags = ["--tls-cert", str(credentials.certificate), "--tls-key", str(credentials.key)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "fellrec.deploy.client_worker", "--address", address),
                *(*flags, "--tls-client-ca", str(credentials.ca)),
            ],
            env={**env, "HF_HUB_OFFLINE": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        describe = ClientRequest("describe", settings, 1)
        intruder = TlsSettings(
            ca=str(credentials.ca), certificate=str(intruder_cert), key=str(intruder_key)
        )
        with pytest.raises(ConnectionError, match="does not accept this caller's certificate"):
            ask_worker(address, describe, tls=intruder)
        with pytest.raises(ConnectionError, match="asks for a client certificate"):
            ask_worker(address, describe, key=KEY, tls=TlsSettings(ca=str(credentials.ca)))
        remote_described = ask_worker(address, describe, tls=tls)
        local_described = answer(describe)
        assert remote_described.client == local_described.client == 1
        assert remote_described.metric_names == local_described.metric_names
        assert remote_described.config_hash == local_described.config_hash is not None
        assert remote_described.catalog_hash == local_described.catalog_hash is not None
        local_start = local_described.parameters
        assert torch.equal(remote_described.parameters, local_start)
        config = ClientRoundConfig(round=0, lr_scale=1.0, proximal_mu=0.0, trains=True)
        train = ClientRequest("train", settings, 1, parameters=local_start, config=config)
        remote, local = ask_worker(address, train, tls=tls), answer(train)
        assert remote.examples == local.examples > 0
        assert remote.loss_sum == pytest.approx(local.loss_sum, abs=1e-9)
        torch.testing.assert_close(remote.parameters, local.parameters, rtol=0, atol=1e-7)
        assert not torch.equal(remote.parameters, local_start)  # it trained
        evaluate = ClientRequest("evaluate", settings, 1, parameters=remote.parameters)
        evaluate = ClientRequest(**{**evaluate.__dict__, "stage": "validation"})
        assert ask_worker(address, evaluate, tls=tls).users > 0
    finally:
        process.terminate()
        process.wait(10)
    # Three requests, one model: the session was built once in the worker.
    assert log.read_text().count("client 1: loading its model and data") == 1
