"""The client worker: a long-lived process answering a SuperNode's messages for its ClientApps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError

import pytest
import torch

pytest.importorskip("flwr", reason="Flower (the flower extra) needs Python >= 3.11")

from fellrec.deploy.client_requests import ClientRequest
from fellrec.deploy.client_session import answer
from fellrec.deploy.client_worker import KEY_ENV, ask_worker, parse_address, serve, worker_key
from fellrec.deploy.run_config import RunSettings
from fellrec.federation.protocol import ClientRoundConfig
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
    with pytest.raises(AuthenticationError):
        ask_worker(address, bogus, key=b"wrong")  # refused; the worker keeps serving
    with pytest.raises(RuntimeError, match="a train request needs parameters"):
        ask_worker(address, ClientRequest("train", RunSettings(("x.yaml",)), 0), key=KEY)
    worker.join(10)
    assert served == [2]


def test_a_worker_process_answers_as_this_process_would_and_loads_the_model_once(
    tmp_path, tiny_encoder_dir
):
    settings = RunSettings((str(write_tiny_config(tmp_path, tiny_encoder_dir)),))
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "worker.log"
    env = {**os.environ, KEY_ENV: KEY.decode(), "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fellrec.deploy.client_worker", "--address", address],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        describe = ClientRequest("describe", settings, 1)
        remote_described, local_described = ask_worker(address, describe, key=KEY), answer(describe)
        assert remote_described.client == local_described.client == 1
        assert remote_described.metric_names == local_described.metric_names
        assert remote_described.config_hash == local_described.config_hash is not None
        assert remote_described.catalog_hash == local_described.catalog_hash is not None
        local_start = local_described.parameters
        assert torch.equal(remote_described.parameters, local_start)
        config = ClientRoundConfig(round=0, lr_scale=1.0, proximal_mu=0.0, trains=True)
        train = ClientRequest("train", settings, 1, parameters=local_start, config=config)
        remote, local = ask_worker(address, train, key=KEY), answer(train)
        assert remote.examples == local.examples > 0
        assert remote.loss_sum == pytest.approx(local.loss_sum, abs=1e-9)
        torch.testing.assert_close(remote.parameters, local.parameters, rtol=0, atol=1e-7)
        assert not torch.equal(remote.parameters, local_start)  # it trained
        evaluate = ClientRequest("evaluate", settings, 1, parameters=remote.parameters)
        evaluate = ClientRequest(**{**evaluate.__dict__, "stage": "validation"})
        assert ask_worker(address, evaluate, key=KEY).users > 0
    finally:
        process.terminate()
        process.wait(10)
    # Three requests, one model: the session was built once in the worker.
    assert log.read_text().count("client 1: loading its model and data") == 1
