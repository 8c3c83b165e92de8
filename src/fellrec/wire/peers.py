"""The caller's side of fellrec's wire: reaching a server, one stream per connection, errors.

A :class:`Peer` is a server as its caller is configured to reach it (address, TLS, key, and the
names of those settings, so that every failure can say what to change). :class:`StreamCall` is a
connection (the block server's: requests and answers in turn on one gRPC stream, with a timeout
per answer); :func:`call_once` a single call (the client worker's).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from fellrec.wire.rpc import KEY_HEADER, MAX_MESSAGE_BYTES, grpc_module
from fellrec.wire.security import TlsSettings, parse_address

#: Ends a stream's request iterator.
_END = b""


@dataclass(frozen=True)
class Peer:
    """A server as its caller knows it: where it is and how the caller is configured to reach it.

    Attributes:
        what: What it is (``"fellrec block server"``).
        address: Its ``host:port``.
        address_setting: The setting that names the address, for messages.
        tls: The caller's TLS settings.
        tls_setting: Where they are set (``model.block_server.tls``).
        key: The shared key the caller sends, or None.
        key_variable: The environment variable of the key.
        start: The command that starts such a server there.
    """

    what: str
    address: str
    address_setting: str
    tls: TlsSettings
    tls_setting: str
    key: bytes | None
    key_variable: str
    start: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata (the key)."""
        return ((KEY_HEADER, self.key.decode()),) if self.key is not None else ()

    def check_credentials(self) -> None:
        """Refuse to call without anything that proves who the caller is.

        Raises:
            ConnectionRefusedError: Naming the variable and the settings to set.
        """
        if self.key is None and self.tls.certificate is None:
            raise ConnectionRefusedError(
                f"nothing proves this caller to the {self.what} at {self.address}: set the "
                f"server's shared key in {self.key_variable}, or a client certificate in "
                f"{self.tls_setting}.certificate and {self.tls_setting}.key (mutual TLS)"
            )

    def channel(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Any:
        """A gRPC channel to the server (it connects at the first call).

        Raises:
            ValueError: Naming the setting of a TLS file that cannot be read.
        """
        grpc = grpc_module(f"the connection to the {self.what}")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if not self.tls.enabled:
            return grpc.insecure_channel(self.address, options=options)
        ca, certificate, key = self.tls.read(self.tls_setting)
        if self.tls.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        credentials = grpc.ssl_channel_credentials(ca, key, certificate)
        return grpc.secure_channel(self.address, credentials, options=options)

    def explain(self, error: Any, connected: bool = False) -> str:
        """What a failed call (a ``grpc.RpcError``) means, in words that name what to change.

        Args:
            error: The error.
            connected: Whether earlier calls on the connection went through (then a lost
                connection is the server gone, not a refused handshake).
        """
        code = error.code() if hasattr(error, "code") else None
        details = str(error.details() if hasattr(error, "details") else error)
        name = getattr(code, "name", str(code))
        where = f"the {self.what} at {self.address}"
        tls = self.tls_setting
        if name == "UNAUTHENTICATED":
            return (
                f"{where} refused this caller's key ({details}): both need the same secret in "
                f"{self.key_variable}"
            )
        if name == "RESOURCE_EXHAUSTED":
            return f"{where} refused a call: {details}"
        if name == "DEADLINE_EXCEEDED":
            return f"{where} did not answer in time"
        if name != "UNAVAILABLE":
            return f"{where} failed ({name}: {details})"
        if connected:
            return f"the connection to {where} was lost ({details})"
        if "Connection refused" in details or "Failed to connect" in details:
            return (
                f"no {self.what} at {self.address} ({self.address_setting}): start it with "
                f"`{self.start}`"
            )
        reason = details.rsplit("OPENSSL_internal:", 1)[-1].removesuffix(": OK").strip()
        if "CERTIFICATE_VERIFY_FAILED" in details or "BAD_SIGNATURE" in details:
            return (
                f"{where} presented a certificate that {tls}.ca ({self.tls.ca}) does not verify "
                f"({reason}): set it to the CA certificate that signed the server's certificate"
            )
        if "Hostname Verification" in details or "Peer name" in details:
            if self.tls.server_name is not None:
                return (
                    f"the certificate of {where} is not made out to {tls}.server_name "
                    f"({self.tls.server_name})"
                )
            host, _ = parse_address(self.address)
            return (
                f"the certificate of {where} is not made out to {host}: set {tls}.server_name "
                "to the name it carries (or connect by that name)"
            )
        if "WRONG_VERSION_NUMBER" in details:
            return f"{where} does not speak TLS (started without --tls-cert?), but {tls}.ca is set"
        if "Socket closed" in details or "Connection reset" in details:
            if not self.tls.enabled:
                return (
                    f"{where} closed the connection: it serves TLS (or is not a {self.what}); "
                    f"set {tls}.ca to the CA certificate that signed its certificate"
                )
            if self.tls.certificate is None:
                return (
                    f"{where} refused the TLS handshake: it asks for a client certificate; set "
                    f"{tls}.certificate and {tls}.key to one signed by a CA it trusts"
                )
            return (
                f"{where} refused the TLS handshake: it does not accept this caller's "
                f"certificate ({tls}.certificate = {self.tls.certificate})"
            )
        if "handshake failed" in details.lower():
            return f"the TLS handshake with {where} failed ({reason}); check {tls}"
        return f"{where} is unavailable ({details})"


class StreamCall:
    """Requests and answers in turn over one bidirectional gRPC stream: a caller's connection.

    The server keeps what belongs to the connection (graphs, caches) until the stream ends.

    Args:
        channel: The channel.
        method: ``/service/method``.
        metadata: Call metadata (the key).
    """

    def __init__(self, channel: Any, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._call = channel.stream_stream(method)(
            iter(self._requests.get, _END), metadata=metadata
        )
        # gRPC gives no timeout on a stream's next answer: a reader thread hands them over.
        threading.Thread(target=self._read, daemon=True, name="fellrec-stream").start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                self._answers.put(answer)
            self._answers.put(EOFError("the server ended the connection"))
        except Exception as error:  # a grpc.RpcError: the stream is over
            self._answers.put(error)

    def ask(self, request: bytes, timeout: float) -> bytes:
        """Send ``request`` and wait for its answer.

        Raises:
            TimeoutError: When no answer comes in ``timeout`` seconds.
            grpc.RpcError: When the stream failed (the server is gone, refused the call, ...).
            EOFError: When the server ended the stream.
        """
        if self._failure is not None:
            raise self._failure
        if not request:
            raise ValueError("an empty request would end the stream")
        self._requests.put(request)
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            self._failure = TimeoutError(f"no answer in {timeout:g} s")
            raise self._failure from None
        if isinstance(answer, BaseException):
            self._failure = answer
            raise answer
        return answer

    def close(self) -> None:
        """End the stream (the server drops what the connection left)."""
        self._requests.put(_END)
        self._call.cancel()


def call_once(peer: Peer, method: str, request: bytes, timeout: float | None = None) -> bytes:
    """One unary call on a fresh channel; the answer's bytes.

    Raises:
        ConnectionError: With :meth:`Peer.explain`'s words when the call failed.
    """
    peer.check_credentials()
    channel = peer.channel()
    try:
        return bytes(channel.unary_unary(method)(request, metadata=peer.metadata, timeout=timeout))
    except Exception as error:
        if hasattr(error, "code"):  # a grpc.RpcError
            raise ConnectionError(peer.explain(error)) from None
        raise
    finally:
        channel.close()
