r"""A long-lived client worker: the base model loaded once per machine, not once per message.

A real Flower 1.42 deployment runs every message in a fresh ``flwr-clientapp`` process (with
``--isolation subprocess`` and ``process`` alike), so a ClientApp that trains in its own process
reloads the base model and the data for every message. A worker is a process started once beside
the SuperNode::

    FELLREC_WORKER_KEY=<secret> python -m fellrec.deploy.client_worker --address 127.0.0.1:7101
    FELLREC_WORKER_KEY=<secret> flower-supernode ... \
        --node-config "partition-id=0 fellrec-worker='127.0.0.1:7101'"

The ClientApp of each message then hands the worker the message as a
:class:`~fellrec.deploy.client_requests.ClientRequest` and relays its answer; the worker keeps
its sessions (model, data) between messages and runs. What it computes is exactly what the
ClientApp would compute in its own process.

The connection is the block server's wire (:mod:`fellrec.wire`): one gRPC call per message,
tensors in safetensors and the rest in JSON (nothing received is unpickled), the caller known by
the shared key in ``FELLREC_WORKER_KEY`` and/or a client certificate. On loopback (the default)
it is clear text; a worker on another machine serves TLS (``--tls-cert``, ``--tls-key``,
optionally ``--tls-client-ca``) and the node config names the CA (``fellrec-worker-tls-ca``) and
the SuperNode's certificate (``fellrec-worker-tls-cert``, ``fellrec-worker-tls-key``).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from fellrec.deploy.client_requests import ClientRequest
from fellrec.import_collector import first_import_paused
from fellrec.wire import peers, rpc
from fellrec.wire.codec import encode
from fellrec.wire.security import (
    ServerTls,
    TlsSettings,
    check_server_security,
    is_loopback,
    key_from_environment,
    require_key,
)
from fellrec.wire.security import parse_address as _parse_address

log = logging.getLogger(__name__)
#: Environment variable holding the key shared by a worker and the ClientApps that use it.
KEY_ENV = "FELLREC_WORKER_KEY"
#: Node-config key naming a SuperNode's worker (``host:port``).
NODE_CONFIG_KEY = "fellrec-worker"
#: Node-config keys of the worker's TLS (PEM paths) and of clear text off loopback.
NODE_TLS_KEYS = {
    "ca": "fellrec-worker-tls-ca",
    "certificate": "fellrec-worker-tls-cert",
    "key": "fellrec-worker-tls-key",
    "server_name": "fellrec-worker-tls-server-name",
}
NODE_INSECURE_KEY = "fellrec-worker-insecure"
#: The worker's gRPC service and its one method.
SERVICE = "fellrec.ClientWorker"
ANSWER_METHOD = f"/{SERVICE}/Answer"


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` as a ``(host, port)`` pair.

    Raises:
        ValueError: Naming the address when it is not ``host:port`` with a numeric port.
    """
    return _parse_address(address, "a fellrec worker address")


def worker_key() -> bytes:
    """The shared key from ``FELLREC_WORKER_KEY``.

    Raises:
        RuntimeError: When it is unset or empty (naming the variable).
    """
    return require_key(KEY_ENV, "the client worker and the SuperNode that uses it")


def worker_tls(node_config: Mapping[str, Any]) -> tuple[TlsSettings, bool]:
    """The TLS settings and the clear-text permission a node config gives its worker's caller."""
    named = {
        name: str(node_config[key]) if node_config.get(key) else None
        for name, key in NODE_TLS_KEYS.items()
    }
    insecure = str(node_config.get(NODE_INSECURE_KEY, "")).lower() in {"1", "true", "yes"}
    return TlsSettings(**named), insecure


def _reports() -> dict[str, type]:
    # Imported here: the worker's answers are Flower-record-backed dataclasses.
    from fellrec.deploy.messages import EvaluationReport, NodeDescription, TrainReport

    return {cls.__name__: cls for cls in (NodeDescription, TrainReport, EvaluationReport)}


def _answer_value(request_value: Any) -> dict[str, Any]:
    """Answer one decoded request with this process's session: the report as plain values."""
    with first_import_paused("fellrec.deploy.client_session"):
        from fellrec.deploy.client_session import answer  # the worker's side: the model code

    request = ClientRequest.from_wire(request_value)
    log.info("client %s: %s", request.client, request.kind)
    report = answer(request)
    values = {f.name: getattr(report, f.name) for f in fields(report)}
    return {"type": type(report).__name__, **values}


def _report_from(value: Any, address: str) -> Any:
    """The report a worker's answer describes."""
    reports = _reports()
    if not isinstance(value, dict) or value.get("type") not in reports:
        raise ConnectionError(f"the fellrec client worker at {address} answered no known report")
    kind = reports[value.pop("type")]
    return kind(**value)


def start(
    address: str,
    key: bytes | None,
    max_requests: int | None = None,
    tls: ServerTls | None = None,
    insecure: bool = False,
    max_message_bytes: int = rpc.MAX_MESSAGE_BYTES,
    handshake_timeout: float = rpc.HANDSHAKE_TIMEOUT,
) -> tuple[rpc.RunningServer, threading.Event, list[int]]:
    """Start answering requests on ``address`` (returns at once).

    Requests are answered one at a time (a session is not shared between threads); a caller is
    refused for its key or certificate before it waits. A request that fails is answered with
    its error (the ClientApp raises it, so Flower reports the message as failed and the server
    lets the client sit the round out); the worker goes on.

    Args:
        address: ``host:port`` to listen on.
        key: The shared key callers must send, or None (then mutual TLS knows them).
        max_requests: Set the returned event after this many answers (tests); None: never.
        tls: The worker's certificate, key and (mutual TLS) client CA; None for clear text.
        insecure: Allow clear text off loopback.
        max_message_bytes: The largest message accepted or sent.
        handshake_timeout: Seconds a connection may take to finish its handshake.

    Returns:
        The server, an event set after ``max_requests`` answers, and ``[answers so far]``.

    Raises:
        ValueError: Naming the flag or variable for insecure settings, unreadable TLS files or
            an address that cannot be bound.
    """
    host, _ = parse_address(address)
    check_server_security(host, tls, key, insecure, KEY_ENV)
    one_at_a_time = threading.Lock()
    done = threading.Event()
    served = [0]

    def answer_call(request: bytes, context: Any) -> bytes:
        with one_at_a_time:
            answer = rpc.answer_to(request, _answer_value, "client worker")
            served[0] += 1
            if max_requests is not None and served[0] >= max_requests:
                done.set()
        return answer

    running = rpc.start_server(
        address,
        SERVICE,
        unary={"Answer": answer_call},
        tls=tls,
        key=key,
        max_message_bytes=max_message_bytes,
        handshake_timeout=handshake_timeout,
        max_calls=8,
    )
    log.info("fellrec client worker listening on %s", running.address)
    return running, done, served


def serve(address: str, key: bytes | None, max_requests: int | None = None, **options: Any) -> int:
    """Answer requests until ``max_requests`` (None: forever); ``options`` are :func:`start`'s.

    Returns:
        The number of requests answered.
    """
    running, done, served = start(address, key, max_requests, **options)
    try:
        done.wait()
    finally:
        running.stop(grace=1.0)
    return served[0]


def ask_worker(
    address: str,
    request: ClientRequest,
    key: bytes | None = None,
    tls: TlsSettings | None = None,
    insecure: bool = False,
) -> Any:
    """Have the worker at ``address`` answer ``request``; what :func:`answer` returns.

    Args:
        address: The worker's ``host:port``.
        request: The request.
        key: The shared key (default: ``FELLREC_WORKER_KEY``, if set).
        tls: TLS to the worker (default: none, clear text).
        insecure: Allow clear text to an address off loopback.

    Raises:
        ConnectionError: When no worker listens there, it refuses this caller, or the settings
            would send clear text off loopback (naming what to set).
        RuntimeError: With the worker's error when the request failed there.
    """
    tls = tls if tls is not None else TlsSettings()
    tls.validate("the node config's fellrec-worker-tls-*")
    host, _ = parse_address(address)
    if not tls.enabled and not is_loopback(host) and not insecure:
        raise ConnectionError(
            f"the fellrec client worker at {address} is not on loopback: reach it over TLS "
            f"({NODE_TLS_KEYS['ca']} in the node config), or set {NODE_INSECURE_KEY}=true for "
            "a private network you trust"
        )
    peer = peers.Peer(
        what="fellrec client worker",
        address=address,
        address_setting=f"node config {NODE_CONFIG_KEY}",
        tls=tls,
        tls_setting="node config fellrec-worker-tls",
        key=key if key is not None else key_from_environment(KEY_ENV),
        key_variable=KEY_ENV,
        start=f"python -m fellrec.deploy.client_worker --address {address}",
    )
    answer = peers.call_once(peer, ANSWER_METHOD, encode(request.to_wire()))
    try:
        value = rpc.read_answer(answer, f"the fellrec client worker at {address}")
    except rpc.RemoteError as error:
        raise RuntimeError(str(error)) from None
    return _report_from(value, address)


def main(argv: list[str] | None = None) -> int:
    """``python -m fellrec.deploy.client_worker --address host:port``."""
    parser = argparse.ArgumentParser(
        prog="python -m fellrec.deploy.client_worker",
        description="A long-lived fellrec client worker beside a SuperNode. Callers prove who "
        f"they are with the shared key in {KEY_ENV} and/or a client certificate "
        "(--tls-client-ca).",
    )
    parser.add_argument(
        "--address", default="127.0.0.1:7101", help="host:port to listen on (default loopback)"
    )
    parser.add_argument("--tls-cert", help="the worker's certificate (PEM): serve TLS")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--tls-client-ca", help="ask callers for a certificate signed by this CA (mutual TLS)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow clear text on an address off loopback"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (options.tls_cert is None) != (options.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if options.tls_client_ca is not None and options.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key (TLS)")
    tls = (
        ServerTls(options.tls_cert, options.tls_key, options.tls_client_ca)
        if options.tls_cert is not None
        else None
    )
    try:
        running, _, _ = start(
            options.address, key_from_environment(KEY_ENV), tls=tls, insecure=options.insecure
        )
    except ValueError as error:
        parser.error(str(error))
    running.server.wait_for_termination()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
