r"""A long-lived client worker: the base model loaded once per machine, not once per message.

A real Flower 1.42 deployment runs every message in a fresh ``flwr-clientapp`` process (with
``--isolation subprocess`` and ``process`` alike), so a ClientApp that trains in its own process
reloads the base model and the data for every message. A worker is a process started once beside
the SuperNode::

    FELLREC_WORKER_KEY=<secret> python -m fellrec.deploy.client_worker --address 127.0.0.1:7101
    FELLREC_WORKER_KEY=<secret> flower-supernode ... \
        --node-config "partition-id=0 fellrec-worker='127.0.0.1:7101'"

The ClientApp of each message then hands the worker the message as a
:class:`~fellrec.deploy.client_requests.ClientRequest` over a local
:mod:`multiprocessing.connection` (HMAC-authenticated with ``FELLREC_WORKER_KEY``) and relays its
answer; the worker keeps its sessions (model, data) between messages and runs. What it computes
is exactly what the ClientApp would compute in its own process.

The connection carries pickled Python objects once the key is verified: bind the worker to
loopback (the default) and keep the key secret; the worker is a part of the client's own machine,
not a network service.
"""

from __future__ import annotations

import argparse
import logging
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from typing import Any

from fellrec import process_links
from fellrec.deploy.client_requests import ClientRequest
from fellrec.process_links import receive as _receive
from fellrec.process_links import send as _send

log = logging.getLogger(__name__)
#: Environment variable holding the key shared by a worker and the ClientApps that use it.
KEY_ENV = "FELLREC_WORKER_KEY"
#: Node-config key naming a SuperNode's worker (``host:port``).
NODE_CONFIG_KEY = "fellrec-worker"


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` as a ``(host, port)`` pair.

    Raises:
        ValueError: Naming the address when it is not ``host:port`` with a numeric port.
    """
    return process_links.parse_address(address, "a fellrec worker address")


def worker_key() -> bytes:
    """The shared key from ``FELLREC_WORKER_KEY``.

    Raises:
        RuntimeError: When it is unset or empty (naming the variable).
    """
    return process_links.key_from_environment(
        KEY_ENV, "the client worker and the SuperNode that uses it"
    )


def serve(address: str, key: bytes, max_requests: int | None = None) -> int:
    """Answer requests, one connection each, until ``max_requests`` (None: forever).

    A request that fails is answered with its error (the ClientApp raises it, so Flower reports
    the message as failed and the server lets the client sit the round out); the worker goes on.

    Args:
        address: ``host:port`` to listen on.
        key: The shared key the callers authenticate with.
        max_requests: Stop after this many requests (tests).

    Returns:
        The number of requests answered.
    """
    from fellrec.deploy.client_session import answer  # the worker's side: the model code

    served = 0
    with Listener(parse_address(address), authkey=key) as listener:
        log.info("fellrec client worker listening on %s", address)
        while max_requests is None or served < max_requests:
            try:
                connection = listener.accept()
            except (AuthenticationError, OSError, EOFError) as error:  # a wrong key, or gone
                log.warning("refused a connection: %s", error)
                continue
            with connection:
                try:
                    request = _receive(connection)
                except EOFError:  # the caller went away before asking
                    continue
                log.info("client %s: %s", request.client, request.kind)
                try:
                    reply: tuple[str, Any] = ("ok", answer(request))
                except Exception as error:  # any failure goes back to the caller
                    log.exception("request %s of client %s failed", request.kind, request.client)
                    reply = ("error", f"{type(error).__name__}: {error}")
                try:
                    _send(connection, reply)
                except OSError as error:  # its SuperNode stopped meanwhile; it may come back
                    log.warning("client %s left before its answer: %s", request.client, error)
            served += 1
    return served


def ask_worker(address: str, request: ClientRequest, key: bytes | None = None) -> Any:
    """Have the worker at ``address`` answer ``request``; what :func:`answer` returns.

    Raises:
        ConnectionError: When no worker listens there (naming the address and how to start one).
        RuntimeError: With the worker's error when the request failed there.
    """
    try:
        connection = Client(parse_address(address), authkey=key or worker_key())
    except ConnectionRefusedError as error:
        raise ConnectionError(
            f"no fellrec client worker at {address} (node config {NODE_CONFIG_KEY}): start it "
            f"with `python -m fellrec.deploy.client_worker --address {address}` and the same "
            f"{KEY_ENV}"
        ) from error
    with connection:
        _send(connection, request)
        status, value = _receive(connection)
    if status != "ok":
        raise RuntimeError(f"the fellrec client worker at {address} failed: {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m fellrec.deploy.client_worker --address host:port``."""
    parser = argparse.ArgumentParser(
        prog="python -m fellrec.deploy.client_worker",
        description="A long-lived fellrec client worker beside a SuperNode (the key is read "
        f"from {KEY_ENV}).",
    )
    parser.add_argument(
        "--address", default="127.0.0.1:7101", help="host:port to listen on (default loopback)"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        parse_address(options.address)
        key = worker_key()
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    serve(options.address, key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
