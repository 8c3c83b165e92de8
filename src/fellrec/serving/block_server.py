r"""The block server: a long-lived process that runs split models' middle blocks for runs.

Start it once (``fellrec serve-blocks`` runs this module)::

    FELLREC_SERVER_KEY=<secret> fellrec serve-blocks --address 127.0.0.1:7200
    FELLREC_SERVER_KEY=<secret> fellrec fit --config ... --model.transport process \
        --model.block_server.address 127.0.0.1:7200

or let a run start its own (``model.transport: process`` without an address: a child process
for the run, stopped at its end). A run attaches to a *session* (its own, by default) and the
server builds a :class:`~fellrec.serving.block_host.BlockHost` for it: the frozen base loaded once,
every client's LoRA on the middle blocks, their optimizers. Each connection is served by its own
thread; requests run one at a time. When a connection closes, the graphs and caches it left are
dropped, and a session no connection uses any more is freed.

The connection carries pickled Python objects once the HMAC key is verified: bind the server to
loopback or a private network and keep the key secret; it is a part of the federation's own
infrastructure, not a public service.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import threading
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import Any

import torch

from fellrec import process_links
from fellrec.models.process_transport import LISTENING, SERVER_KEY_ENV
from fellrec.serving.block_host import BlockHost, BlockHostSpec

log = logging.getLogger(__name__)


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

    def answer(self, request: dict[str, Any], owner: int, attached: list[str]) -> Any:
        """Answer one request of connection ``owner`` (``attached``: its session, once known)."""
        with self.lock:
            if request["kind"] == "attach":
                return self._attach(request, owner, attached)
            if not attached:
                raise ValueError(f"attach before {request['kind']!r}")
            return self.sessions[attached[0]].host.handle(request, owner)

    def _attach(self, request: dict[str, Any], owner: int, attached: list[str]) -> dict[str, Any]:
        spec = BlockHostSpec(**request["spec"])
        name = str(request.get("session") or f"connection-{owner}")
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

    def serve_connection(self, connection: Connection, owner: int) -> None:
        """Answer a connection's requests until it closes."""
        attached: list[str] = []
        try:
            with connection:
                while True:
                    try:
                        request = process_links.receive(connection)
                    except (EOFError, OSError):  # the client is gone
                        return
                    try:
                        reply: tuple[str, Any] = ("ok", self.answer(request, owner, attached))
                    except Exception as error:  # any failure goes back to the caller
                        log.exception("request %s failed", request.get("kind"))
                        reply = ("error", f"{type(error).__name__}: {error}")
                    try:
                        process_links.send(connection, reply)
                    except OSError:
                        return
        finally:
            self.detach(owner, attached)


def serve(address: str, key: bytes, single_client: bool = False, ttl: float = 600.0) -> None:
    """Listen on ``address`` and serve every connection in a thread of its own.

    Prints :data:`~fellrec.models.process_transport.LISTENING` and the bound ``host:port`` once
    listening (port 0 picks a free one).

    Args:
        address: ``host:port`` to listen on.
        key: The shared key connections authenticate with.
        single_client: Serve one connection, then exit (a run's own child server).
        ttl: Seconds after which unclaimed graphs and caches are dropped.
    """
    server = BlockServer(ttl)
    host, port = process_links.parse_address(address, "--address")
    with Listener((host, port), authkey=key) as listener:
        bound_host, bound_port = listener.address
        print(f"{LISTENING}{bound_host}:{bound_port}", flush=True)
        for owner in itertools.count():
            try:
                connection = listener.accept()
            except (AuthenticationError, OSError, EOFError) as error:  # a wrong key, or gone
                log.warning("refused a connection: %s", error)
                continue
            if single_client:
                server.serve_connection(connection, owner)
                return
            threading.Thread(
                target=server.serve_connection, args=(connection, owner), daemon=True
            ).start()


def main(argv: list[str] | None = None) -> int:
    """``fellrec serve-blocks --address host:port`` (the key is read from FELLREC_SERVER_KEY)."""
    parser = argparse.ArgumentParser(
        prog="fellrec serve-blocks",
        description="Serve split models' middle blocks to runs with model.transport: process "
        f"(the key is read from {SERVER_KEY_ENV}).",
    )
    parser.add_argument(
        "--address", default="127.0.0.1:7200", help="host:port to listen on (default loopback)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--ttl", type=float, default=600.0, help="seconds before unclaimed graphs are dropped"
    )
    parser.add_argument("--single-client", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        process_links.parse_address(options.address, "--address")
        key = process_links.key_from_environment(
            SERVER_KEY_ENV, "the block server and the runs that use it"
        )
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    serve(options.address, key, options.single_client, options.ttl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
