"""gRPC as the carrier of fellrec's wire: servers, channels, and errors a person can act on.

gRPC (``grpcio``, the ``rpc`` extra; the ``flower`` extra brings it too) frames the messages
(HTTP/2), encrypts and authenticates them (TLS), limits their size, and accepts connections in
its own event loop, so a connection that never finishes its handshake delays nobody else and is
dropped after the handshake timeout. fellrec registers its methods without generated protobuf
code: every request and answer is one :mod:`fellrec.wire.codec` message, and an answer is
``{"ok": value}`` or ``{"error": "<what went wrong there>"}``.

A server knows its callers by their TLS client certificate (mutual TLS) and/or by the shared key
each call carries in its metadata (:data:`KEY_HEADER`), checked before anything is read. The
callers' side is :mod:`fellrec.wire.peers`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fellrec.wire.codec import WireError, decode, encode
from fellrec.wire.security import ServerTls, parse_address, read_pem

log = logging.getLogger(__name__)

#: Call metadata carrying the shared key.
KEY_HEADER = "fellrec-key"
#: Default limit of one message, each way (tensors of a step, a round's LoRA rows, optimizers).
MAX_MESSAGE_BYTES = 1 << 30
#: Default seconds a connection may take to finish its (TLS and HTTP/2) handshake.
HANDSHAKE_TIMEOUT = 10.0
#: The server pings an idle connection this often (ms) and drops it when a ping goes unanswered
#: for :data:`_KEEPALIVE_TIMEOUT_MS`: a caller whose machine vanished is noticed.
_KEEPALIVE_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 20_000

#: A unary handler: ``(request bytes, context) -> answer bytes``.
Unary = Callable[[bytes, Any], bytes]
#: A stream handler: ``(request iterator, context) -> answer iterator``.
Stream = Callable[[Iterator[bytes], Any], Iterator[bytes]]


def grpc_module(what: str) -> ModuleType:
    """The ``grpc`` module.

    Args:
        what: What needs it, for the error (e.g. ``"model.transport: process"``).

    Raises:
        ImportError: Saying how to install it when it is missing.
    """
    try:
        import grpc
    except ImportError:
        raise ImportError(
            f"{what} needs gRPC (the grpcio package), which is not installed: "
            "pip install 'fellrec[rpc]' (the flower extra brings it too)"
        ) from None
    return grpc


class RemoteError(RuntimeError):
    """A request that failed on the server (its error message comes back)."""


def answer_ok(value: Any) -> bytes:
    """A successful answer."""
    return encode({"ok": value})


def answer_error(message: str) -> bytes:
    """A failed request's answer."""
    return encode({"error": message})


def answer_to(request: bytes, handle: Callable[[Any], Any], what: str) -> bytes:
    """Decode ``request``, have ``handle`` answer it, encode the answer (or the failure).

    Any failure, a malformed message included, becomes an error answer: the server goes on.

    Args:
        request: The request's bytes.
        handle: ``request value -> answer value``.
        what: What the server is, for its log.
    """
    try:
        value = decode(request)
    except WireError as error:
        log.warning("%s: refused a request: %s", what, error)
        return answer_error(f"WireError: {error}")
    try:
        return answer_ok(handle(value))
    except Exception as error:  # any failure goes back to the caller
        log.exception("%s: a request failed", what)
        return answer_error(f"{type(error).__name__}: {error}")


def read_answer(data: bytes, what: str) -> Any:
    """The value of an answer.

    Args:
        data: The answer's bytes.
        what: The server and its address, for the error.

    Raises:
        RemoteError: With the server's error when the request failed there.
        WireError: When the answer is malformed.
    """
    answer = decode(data)
    if not isinstance(answer, dict) or len(answer) != 1 or not {"ok", "error"} & set(answer):
        raise WireError(f"{what} answered something that is not a fellrec answer")
    if "error" in answer:
        raise RemoteError(f"{what} failed: {answer['error']}")
    return answer["ok"]


# ---------------------------------------------------------------------------------- servers
@dataclass
class RunningServer:
    """A started gRPC server.

    Attributes:
        server: The ``grpc.Server``.
        address: The bound ``host:port`` (the port picked when 0 was asked).
    """

    server: Any
    address: str

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (``grace`` seconds for calls in flight)."""
        self.server.stop(grace).wait()


def start_server(
    address: str,
    service: str,
    *,
    unary: dict[str, Unary] | None = None,
    streams: dict[str, Stream] | None = None,
    tls: ServerTls | None = None,
    key: bytes | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_calls: int = 32,
) -> RunningServer:
    """Start a gRPC server for ``service``'s methods on ``address``.

    Args:
        address: ``host:port`` to listen on (port 0 picks a free one).
        service: The service name (``/service/method`` paths).
        unary: Unary methods by name.
        streams: Bidirectional streaming methods by name.
        tls: The server's TLS files, or None for clear text.
        key: The shared key every call must carry, or None (then mutual TLS knows the callers).
        max_message_bytes: The largest message accepted or sent.
        handshake_timeout: Seconds a connection may take to finish its handshake.
        max_calls: Calls (streams) served at once; more are refused with a message.

    Raises:
        ValueError: When a TLS file cannot be read (naming the flag) or the address is taken.
    """
    grpc = grpc_module("a fellrec server")
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(_checked_unary(method, key, grpc))
        for name, method in (unary or {}).items()
    }
    handlers.update(
        {
            name: grpc.stream_stream_rpc_method_handler(_checked_stream(method, key, grpc))
            for name, method in (streams or {}).items()
        }
    )
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.server_handshake_timeout_ms", int(handshake_timeout * 1000)),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        # Linux lets a second server bind the same port with SO_REUSEPORT: refuse that instead.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_calls, thread_name_prefix=service),
        handlers=[grpc.method_handlers_generic_handler(service, handlers)],
        options=options,
        maximum_concurrent_rpcs=max_calls,
    )
    host, _ = parse_address(address, "--address")
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            client_ca = read_pem(tls.client_ca, "--tls-client-ca") if tls.client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(read_pem(tls.key, "--tls-key"), read_pem(tls.certificate, "--tls-cert"))],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:  # grpc raises when it cannot bind
        raise ValueError(f"cannot listen on --address {address}: {error}") from None
    if not port:
        raise ValueError(f"cannot listen on --address {address} (in use, or not this machine's)")
    server.start()
    return RunningServer(server, f"{host}:{port}")


def _refuse_without_key(context: Any, key: bytes | None, grpc: ModuleType) -> None:
    """Abort the call unless it carries ``key`` (when the server has one)."""
    if key is None:
        return
    sent = dict(context.invocation_metadata()).get(KEY_HEADER)
    if sent is None:
        log.warning("refused a caller (%s) without a key", context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this server needs a shared key")
    if not hmac.compare_digest(str(sent).encode(), key):
        log.warning("refused a caller (%s) with a wrong key", context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this server has another key")


def _checked_unary(method: Unary, key: bytes | None, grpc: ModuleType) -> Unary:
    def checked(request: bytes, context: Any) -> bytes:
        _refuse_without_key(context, key, grpc)
        return method(request, context)

    return checked


def _checked_stream(method: Stream, key: bytes | None, grpc: ModuleType) -> Stream:
    def checked(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        _refuse_without_key(context, key, grpc)
        return method(requests, context)

    return checked
