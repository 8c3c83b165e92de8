"""Who may talk to a fellrec server, and how: addresses, the shared key, TLS certificates.

A fellrec server (block server, client worker) knows its callers one of two ways, or both:

- **mutual TLS**: the server asks every caller for a certificate signed by a CA it trusts
  (``--tls-client-ca``); callers present theirs (``tls.certificate`` / ``tls.key``);
- **a shared key**: a secret in an environment variable on both sides, sent with every call
  (inside TLS when TLS is on; in clear text on loopback).

Callers verify the server's certificate against the CA they are given (``tls.ca``). Without TLS
everything crosses in clear text, which fellrec allows on loopback only, unless asked explicitly
(``insecure``) for a private network.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path


def parse_address(address: str, what: str = "a fellrec address") -> tuple[str, int]:
    """``"host:port"`` as a ``(host, port)`` pair (``[::1]:7200`` for IPv6).

    Args:
        address: The address to parse.
        what: What the address is, for the error message (e.g. the setting's name).

    Raises:
        ValueError: Naming the address when it is not ``host:port`` with a numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} is host:port, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def key_from_environment(variable: str) -> bytes | None:
    """The shared key in the environment variable ``variable``, or None when unset or empty."""
    key = os.environ.get(variable, "")
    return key.encode() if key else None


def require_key(variable: str, users: str) -> bytes:
    """The shared key in ``variable``.

    Args:
        variable: The variable's name.
        users: Who shares the key, for the error message.

    Raises:
        RuntimeError: When it is unset or empty (naming the variable).
    """
    key = key_from_environment(variable)
    if key is None:
        raise RuntimeError(
            f"{variable} is not set: {users} need the same secret in it "
            f"(e.g. export {variable}=$(openssl rand -hex 16))"
        )
    return key


def read_pem(path: str | Path, setting: str) -> bytes:
    """The PEM file ``path``, named ``setting`` in the error when it cannot be read.

    Raises:
        ValueError: When the file is missing, unreadable or not PEM.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{setting}: cannot read {path}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting}: {path} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass
class TlsSettings:
    """How a caller reaches a fellrec server over TLS (all paths to PEM files).

    TLS is on when ``ca`` is set.
    """

    ca: str | None = None
    """The CA certificate that signed the server's certificate: the server is verified against
    it (and its host name, or ``server_name``). None: no TLS (loopback, or ``insecure``)."""
    certificate: str | None = None
    """This caller's certificate, for a server that asks for one (mutual TLS)."""
    key: str | None = None
    """The private key of ``certificate``."""
    server_name: str | None = None
    """The name the server's certificate must carry, when it is not the address's host."""

    @property
    def enabled(self) -> bool:
        """Whether the connection uses TLS."""
        return self.ca is not None

    def validate(self, prefix: str) -> None:
        """Refuse settings that do not go together, naming them under ``prefix`` (e.g. ``x.tls``).

        Raises:
            ValueError: A certificate without its key (or the reverse), or either without ``ca``.
        """
        if (self.certificate is None) != (self.key is None):
            raise ValueError(f"{prefix}.certificate and {prefix}.key go together: set both")
        if self.certificate is not None and self.ca is None:
            raise ValueError(
                f"{prefix}.certificate is set but {prefix}.ca is not: set the CA that signed "
                "the server's certificate (TLS is on when it is set)"
            )
        if self.server_name is not None and self.ca is None:
            raise ValueError(f"{prefix}.server_name needs {prefix}.ca (TLS)")

    def read(self, prefix: str) -> tuple[bytes, bytes | None, bytes | None]:
        """The CA, certificate and key PEM bytes (the last two None without a certificate).

        Raises:
            ValueError: Naming the setting of a file that cannot be read.
        """
        assert self.ca is not None, "read() is for TLS settings (ca set)"
        ca = read_pem(self.ca, f"{prefix}.ca")
        if self.certificate is None or self.key is None:
            return ca, None, None
        return (
            ca,
            read_pem(self.certificate, f"{prefix}.certificate"),
            read_pem(self.key, f"{prefix}.key"),
        )


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS files (paths to PEM files).

    Attributes:
        certificate: The server's certificate (``--tls-cert``), signed by a CA its callers trust.
        key: Its private key (``--tls-key``).
        client_ca: The CA whose certificates callers must present (``--tls-client-ca``: mutual
            TLS), or None to accept any caller that completes the handshake (then the shared key
            says who may call).
    """

    certificate: str
    key: str
    client_ca: str | None = None


def check_server_security(
    host: str,
    tls: ServerTls | None,
    key: bytes | None,
    insecure: bool,
    key_variable: str,
) -> None:
    """Refuse a server that would not know its callers or would speak clear text to a network.

    Args:
        host: The host it listens on.
        tls: Its TLS files, or None (clear text).
        key: The shared key, or None.
        insecure: Clear text off loopback was asked for explicitly (``--insecure``).
        key_variable: The key's environment variable, for the message.

    Raises:
        ValueError: Naming the flags or variable to set.
    """
    if key is None and (tls is None or tls.client_ca is None):
        raise ValueError(
            f"callers must prove who they are: set a shared key in {key_variable} (e.g. export "
            f"{key_variable}=$(openssl rand -hex 16)), or ask for client certificates with "
            "--tls-client-ca (mutual TLS)"
        )
    if tls is None and not is_loopback(host) and not insecure:
        raise ValueError(
            f"--address {host} is not loopback: serve TLS (--tls-cert and --tls-key), or pass "
            "--insecure to send everything in clear text over a network you trust"
        )
