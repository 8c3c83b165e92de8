"""Authenticated connections between fellrec's own processes: addresses, keys and messages.

Two long-lived fellrec processes answer others over :mod:`multiprocessing.connection` (an HMAC
challenge with a shared key, then pickled messages): the client worker beside a Flower SuperNode
(:mod:`fellrec.deploy.client_worker`) and the block server that hosts a split model's middle
blocks (:mod:`fellrec.models.block_server`). Both parse ``host:port`` addresses, read their key
from an environment variable and frame messages the same way, here.
"""

from __future__ import annotations

import os
import pickle
from multiprocessing.connection import Connection
from typing import Any


def parse_address(address: str, what: str = "a fellrec worker address") -> tuple[str, int]:
    """``"host:port"`` as a ``(host, port)`` pair.

    Args:
        address: The address to parse.
        what: What the address is, for the error message.

    Raises:
        ValueError: Naming the address when it is not ``host:port`` with a numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} is host:port, got {address!r}")
    return host, int(port)


def key_from_environment(variable: str, users: str) -> bytes:
    """The shared key in the environment variable ``variable``.

    Args:
        variable: The variable's name.
        users: Who shares the key, for the error message.

    Raises:
        RuntimeError: When it is unset or empty (naming the variable).
    """
    key = os.environ.get(variable, "")
    if not key:
        raise RuntimeError(
            f"{variable} is not set: {users} need the same secret in it "
            f"(e.g. export {variable}=$(openssl rand -hex 16))"
        )
    return key.encode()


def send(connection: Connection, value: object) -> int:
    """Send ``value`` pickled; the number of bytes that went on the wire.

    Plain pickle, not the connection's own ``send()``: torch registers reducers with
    multiprocessing's pickler that pass tensors as shared-memory handles, which another process
    can only fetch with the sender's own process key. Plain pickle copies the data.
    """
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    connection.send_bytes(data)
    return len(data)


def receive(connection: Connection) -> Any:
    """Receive one value :func:`send` sent (raises ``EOFError`` when the peer is gone)."""
    return pickle.loads(connection.recv_bytes())
