r"""The block server: a long-lived process that runs split models' middle blocks for runs.

Start it once (``fellrec serve-blocks`` runs this module); across organisations over TLS, with
client certificates (mutual TLS) and/or a shared key::

    fellrec serve-blocks --address 0.0.0.0:7200 \
        --tls-cert server.pem --tls-key server.key --tls-client-ca clients-ca.crt
    fellrec fit --config ... --model.transport process \
        --model.block_server.address blocks.example.org:7200 \
        --model.block_server.tls.ca ca.crt \
        --model.block_server.tls.certificate client.pem --model.block_server.tls.key client.key

or on loopback in clear text with a shared key (``FELLREC_SERVER_KEY`` on both sides), or let a
run start its own (``model.transport: process`` without an address: a child process for the
run, on loopback with a one-time key, stopped at its end). A run attaches to a *session* (its
own, by default) and the server builds a :class:`~fellrec.serving.block_host.BlockHost` for it:
the frozen base loaded once, every client's LoRA on the middle blocks, their optimizers.

Each run holds one connection: a bidirectional gRPC stream (:mod:`fellrec.wire.rpc`) of
:mod:`fellrec.wire.codec` messages, requests answered one at a time. When it ends, the graphs
and caches it left are dropped, and a session no connection uses any more is freed. Connections
are accepted in gRPC's own event loop: one that never finishes its handshake delays nobody and
is dropped after ``--handshake-timeout`` seconds. A malformed message gets an error answer; one
over ``--max-message-mb`` is refused by gRPC before it is read.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fellrec import __version__
from fellrec.models.process_transport import LISTENING, SERVER_KEY_ENV
from fellrec.serving.block_host import BlockHost, BlockHostSpec
from fellrec.wire import rpc
from fellrec.wire.security import (
    ServerTls,
    check_server_security,
    key_from_environment,
    parse_address,
)

log = logging.getLogger(__name__)

#: The gRPC service and its one method: a run's connection.
SERVICE = "fellrec.BlockServer"
SESSION_METHOD = f"/{SERVICE}/Session"


@dataclass
class _Session:
    host: BlockHost
    connections: set[int] = field(default_factory=set)


class BlockServer:
    """Sessions of block hosts, shared by the connections attached to them.

    Args:
        ttl: Seconds after which a graph or cache nobody claimed is dropped.
    """

    def __init__(self, ttl: float = 600.0) -> None:
        self.ttl = ttl
        self.sessions: dict[str, _Session] = {}
        self.lock = threading.Lock()
        self._owners = itertools.count()
        #: Set when a connection ended (a run's own server stops after its one connection).
        self.connection_ended = threading.Event()

    def answer(self, request: Any, owner: int, attached: list[str]) -> Any:
        """Answer one request of connection ``owner`` (``attached``: its session, once known).

        Raises:
            ValueError: For a request that is not a dict with a known ``kind``, or any request
                but ``hello`` before ``attach``.
        """
        if not isinstance(request, dict) or not isinstance(request.get("kind"), str):
            raise ValueError("a block server request is a dict with a 'kind'")
        if request["kind"] == "hello":
            return {"server": "fellrec block server", "version": __version__}
        with self.lock:
            if request["kind"] == "attach":
                return self._attach(request, owner, attached)
            if not attached:
                raise ValueError(f"attach before {request['kind']!r}")
            return self.sessions[attached[0]].host.handle(request, owner)

    def _attach(self, request: dict[str, Any], owner: int, attached: list[str]) -> dict[str, Any]:
        spec = BlockHostSpec(**request["spec"])
        # A run's own session cannot be named by another connection: named ones (shared on
        # purpose, by whoever knows the name) live apart from the connections' own.
        named = request.get("session")
        name = f"named:{named}" if named else f"connection-{owner}"
        session = self.sessions.get(name)
        if session is not None and session.host.spec != spec:
            raise ValueError(f"session {name!r} holds another model: {session.host.spec}")
        if session is None:
            log.info("session %s: building %s (clients %s)", name, spec.backbone, spec.clients)
            session = self.sessions[name] = _Session(BlockHost(spec, self.ttl))
        session.connections.add(owner)
        attached[:] = [name]
        return session.host.describe()

    def detach(self, owner: int, attached: list[str]) -> None:
        """A connection closed: drop what it left, and its session if nobody else uses it."""
        with self.lock:
            if not attached or attached[0] not in self.sessions:
                return
            session = self.sessions[attached[0]]
            session.host.drop_owner(owner)
            session.connections.discard(owner)
            if not session.connections:
                del self.sessions[attached[0]]
                log.info("session %s: freed", attached[0])

    def connection(self, requests: Iterator[bytes], context: Any = None) -> Iterator[bytes]:
        """Answer a connection's requests (wire messages) until it ends; the gRPC method."""
        owner = next(self._owners)
        attached: list[str] = []
        try:
            for request in requests:
                yield rpc.answer_to(
                    request, lambda value: self.answer(value, owner, attached), "block server"
                )
        finally:
            self.detach(owner, attached)
            self.connection_ended.set()


def start(
    address: str,
    key: bytes | None,
    ttl: float = 600.0,
    tls: ServerTls | None = None,
    insecure: bool = False,
    max_message_bytes: int = rpc.MAX_MESSAGE_BYTES,
    handshake_timeout: float = rpc.HANDSHAKE_TIMEOUT,
    max_runs: int = 32,
) -> tuple[BlockServer, rpc.RunningServer]:
    """Start serving on ``address`` (returns at once).

    Args:
        address: ``host:port`` to listen on (port 0 picks a free one).
        key: The shared key every connection must carry, or None (mutual TLS only).
        ttl: Seconds after which unclaimed graphs and caches are dropped.
        tls: The server's certificate, key and (mutual TLS) client CA; None for clear text.
        insecure: Allow clear text off loopback.
        max_message_bytes: The largest message accepted or sent.
        handshake_timeout: Seconds a connection may take to finish its handshake.
        max_runs: Connections served at once; more are refused with a message.

    Raises:
        ValueError: Naming the flag or variable when the security settings would let anybody
            in or send clear text to a network, when a TLS file cannot be read, or when the
            address cannot be bound.
    """
    host, _ = parse_address(address, "--address")
    check_server_security(host, tls, key, insecure, SERVER_KEY_ENV)
    server = BlockServer(ttl)
    running = rpc.start_server(
        address,
        SERVICE,
        streams={"Session": server.connection},
        tls=tls,
        key=key,
        max_message_bytes=max_message_bytes,
        handshake_timeout=handshake_timeout,
        max_calls=max_runs,
    )
    return server, running


def serve(address: str, key: bytes | None, single_client: bool = False, **options: Any) -> None:
    """Serve on ``address`` until stopped (or, with ``single_client``, until a connection ends).

    ``options`` are :func:`start`'s.
    """
    server, running = start(address, key, **options)
    _serve_until_done(server, running, single_client)


def _serve_until_done(server: BlockServer, running: rpc.RunningServer, single_client: bool) -> None:
    """Print :data:`~fellrec.models.process_transport.LISTENING` and the bound address; serve."""
    print(f"{LISTENING}{running.address}", flush=True)
    try:
        if single_client:
            server.connection_ended.wait()
        else:
            running.server.wait_for_termination()
    finally:
        running.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    """``fellrec serve-blocks --address host:port [--tls-cert ... --tls-key ...]``."""
    parser = argparse.ArgumentParser(
        prog="fellrec serve-blocks",
        description="Serve split models' middle blocks to runs with model.transport: process. "
        f"Callers prove who they are with the shared key in {SERVER_KEY_ENV} and/or a client "
        "certificate (--tls-client-ca).",
    )
    parser.add_argument(
        "--address", default="127.0.0.1:7200", help="host:port to listen on (default loopback)"
    )
    parser.add_argument("--tls-cert", help="the server's certificate (PEM): serve TLS")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        help="ask every run for a client certificate signed by this CA (PEM): mutual TLS",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow clear text on an address that is not loopback (a network you trust)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--ttl", type=float, default=600.0, help="seconds before unclaimed graphs are dropped"
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=rpc.MAX_MESSAGE_BYTES / 2**20,
        help="largest message accepted or sent, MiB (default %(default)g)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=rpc.HANDSHAKE_TIMEOUT,
        help="seconds a connection may take to finish its handshake (default %(default)g)",
    )
    parser.add_argument(
        "--max-runs", type=int, default=32, help="connections served at once (default 32)"
    )
    parser.add_argument("--single-client", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (options.tls_cert is None) != (options.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if options.tls_client_ca is not None and options.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key (TLS)")
    for name in ("max_message_mb", "handshake_timeout", "max_runs"):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if options.max_message_mb >= 2048:
        parser.error("--max-message-mb must be below 2048 (gRPC's limit)")
    tls = (
        ServerTls(options.tls_cert, options.tls_key, options.tls_client_ca)
        if options.tls_cert is not None
        else None
    )
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        server, running = start(
            options.address,
            key_from_environment(SERVER_KEY_ENV),
            ttl=options.ttl,
            tls=tls,
            insecure=options.insecure,
            max_message_bytes=int(options.max_message_mb * 2**20),
            handshake_timeout=options.handshake_timeout,
            max_runs=options.max_runs,
        )
    except ValueError as error:
        parser.error(str(error))
    _serve_until_done(server, running, options.single_client)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
