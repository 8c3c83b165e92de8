"""A transport to a block server in its own process: the server's middle blocks leave the client.

``model.transport: process``. A block server (:mod:`fellrec.serving.block_server`) is a long-lived
process holding one frozen base and every client's LoRA on the middle blocks; it trains that LoRA
(one optimizer per client, stepped when the client steps) and keeps, per call, the autograd graph
of the forward it ran until the client's gradient comes back. The client process runs the
embeddings, front and back blocks and the head, as with ``local``, and sends through this
transport exactly what the :class:`~fellrec.models.transport.Transport` contract names: hidden
states, the 2-D mask and position ids forward, gradients backward. Besides them a call carries
only control values: a call id, the client's adapter name, whether the blocks are in training
mode, and while training the random-number generator's state (so the server's dropout draws what
it would draw in one process, which makes the two transports equal number for number; a count of
random draws, no data). Generation keeps a KV cache per client and call on the server, reordered
with the client's beams.

The connection is one gRPC stream of :mod:`fellrec.wire` messages (tensors in safetensors,
control values in JSON: nothing received is unpickled). Without an address fellrec starts a
block server as a child process for the run (on loopback, with a one-time key, stopped at the
end); with ``model.block_server.address`` it uses a running one (``fellrec serve-blocks``), over
TLS (``model.block_server.tls``: the server's certificate verified against ``ca``; a client
certificate for mutual TLS) and/or with the shared key in ``FELLREC_SERVER_KEY``.

Longer than most modules: it is one class whose state is one connection (start or reach the
server, its session, each call, generation's cache, shutdown); its wire format and RPC stack
live in :mod:`fellrec.wire`.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from torch import Tensor

from fellrec.models.transport import (
    MiddleCall,
    Server,
    Transport,
)
from fellrec.wire import peers, rpc
from fellrec.wire.codec import WireError, encode
from fellrec.wire.security import TlsSettings, is_loopback, key_from_environment, parse_address

#: Environment variable with the key a block server and its clients share.
SERVER_KEY_ENV = "FELLREC_SERVER_KEY"
#: The line a block server prints once it listens (followed by ``host:port``).
LISTENING = "fellrec block server listening on "
#: The block server's gRPC service, and its one method: a run's connection (a stream).
SERVICE = "fellrec.BlockServer"
SESSION_METHOD = f"/{SERVICE}/Session"


class BlockServerError(ConnectionError):
    """The block server is gone, refused this run, or did not answer: the run cannot go on."""


@dataclass
class BlockServerSettings:
    """Where the block server of ``model.transport: process`` runs, and how to reach it."""

    address: str | None = None
    """``host:port`` of a running block server (``fellrec serve-blocks``); None starts one as a
    child process of the run (loopback, a one-time key)."""
    timeout: float = 600.0
    """Seconds to wait for one answer before the run stops with an error."""
    tls: TlsSettings = field(default_factory=TlsSettings)
    """TLS to the server: ``ca`` (verify the server's certificate; TLS is on when set),
    ``certificate`` and ``key`` (this run's client certificate, for mutual TLS), ``server_name``
    (the name on the server's certificate, when not the address's host)."""
    insecure: bool = False
    """Allow clear text to an address that is not loopback (a private network you trust)."""
    max_message_mb: float = rpc.MAX_MESSAGE_BYTES / 2**20
    """The largest message sent or accepted, MiB (a step's tensors, a round's LoRA rows)."""

    def validate(self) -> None:
        """Refuse settings that cannot work, naming them.

        Raises:
            ValueError: An address that is not ``host:port``, a timeout or size that is not
                positive, TLS settings that do not go together, without an address or naming a
                file that cannot be read, clear text to an address off loopback without
                ``insecure``.
        """
        if self.timeout <= 0:
            raise ValueError(f"model.block_server.timeout must be > 0, got {self.timeout}")
        if not 0 < self.max_message_mb < 2048:
            raise ValueError(
                "model.block_server.max_message_mb must be > 0 and below 2048 (gRPC's limit), "
                f"got {self.max_message_mb}"
            )
        self.tls.validate("model.block_server.tls")
        if self.address is None:
            if self.tls.enabled:
                raise ValueError(
                    "model.block_server.tls is set but model.block_server.address is not: TLS "
                    "is for a running server (fellrec serve-blocks); a run's own block server "
                    "listens on loopback only"
                )
            return
        if self.tls.enabled:
            self.tls.read("model.block_server.tls")  # a missing file is named now, not mid-run
        host, _ = parse_address(self.address, "model.block_server.address")
        if not self.tls.enabled and not is_loopback(host) and not self.insecure:
            raise ValueError(
                f"model.block_server.address {self.address} is not loopback: set "
                "model.block_server.tls.ca to reach it over TLS (hidden states give away the "
                "inputs), or model.block_server.insecure: true for a private network you trust"
            )


def _wire(tensor: Tensor) -> Tensor:
    """A compact CPU copy of what crosses (a view's own elements, not its whole storage)."""
    return tensor.detach().cpu().clone()


def random_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The generators' states dropout on ``device`` draws from (CPU, and the device's own)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_random_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Restore :func:`random_state`'s states."""
    torch.set_rng_state(state[0])
    if state[1] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def autocast_state(device: torch.device) -> torch.dtype | None:
    """The autocast dtype in force on ``device``'s type, or None (mixed precision crosses)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class ProcessTransport(Transport):
    """The server's middle blocks in a block server process; see the module docstring.

    Args:
        settings: Where the server runs and how long to wait for it.
    """

    def __init__(self, settings: BlockServerSettings | None = None) -> None:
        super().__init__()
        rpc.grpc_module("model.transport: process")
        self.settings = settings if settings is not None else BlockServerSettings()
        self.settings.validate()
        self.address = self.settings.address
        self._channel: Any = None
        self._stream: peers.StreamCall | None = None
        self._peer: peers.Peer | None = None
        self._child: subprocess.Popen[str] | None = None
        self._ids = itertools.count()
        self._caches: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._session: dict[str, Any] | None = None
        self._spec: Callable[[], dict[str, Any]] | None = None
        self._on_attach: Callable[[dict[str, Any]], None] = lambda described: None
        #: Why the connection was lost (a run does not reconnect: the server's state is gone).
        self._lost: str | None = None
        self._adapter_name: Callable[[], str] = lambda: ""
        self._training: Callable[[], bool] = lambda: False
        #: Bytes that went over the connection (wire messages, both ways), and by request.
        self.wire_bytes = 0
        self.wire_bytes_by_request: Counter[str] = Counter()

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Connect to the block server (starting a child one when no address is set).

        Raises:
            BlockServerError: Saying what to change when the server is not there, refuses this
                run (its key or certificate) or presents a certificate this run does not trust.
            ValueError: Naming the setting of a TLS file that cannot be read.
        """
        if self._stream is not None:
            return
        if self._lost is not None:
            raise BlockServerError(self._lost)
        key: bytes | None
        if self.address is None:
            self.address, key = self._start_child()
        else:
            key = key_from_environment(SERVER_KEY_ENV)
        peer = peers.Peer(
            what="fellrec block server",
            address=self.address,
            address_setting="model.block_server.address",
            tls=self.settings.tls,
            tls_setting="model.block_server.tls",
            key=key,
            key_variable=SERVER_KEY_ENV,
            start=f"fellrec serve-blocks --address {self.address}",
        )
        try:
            peer.check_credentials()
        except ConnectionError as error:
            raise BlockServerError(str(error)) from None
        channel = peer.channel(int(self.settings.max_message_mb * 2**20))
        stream = peers.StreamCall(channel, SESSION_METHOD, peer.metadata)
        try:
            hello = rpc.read_answer(
                stream.ask(encode({"kind": "hello"}), self.settings.timeout), peer.what
            )
        except Exception as error:
            stream.close()
            channel.close()
            if hasattr(error, "code"):  # a grpc.RpcError
                raise BlockServerError(peer.explain(error)) from None
            raise BlockServerError(
                f"the {peer.what} at {self.address} did not answer as one "
                f"({type(error).__name__}: {error})"
            ) from None
        if not isinstance(hello, dict) or hello.get("server") != "fellrec block server":
            stream.close()
            channel.close()
            raise BlockServerError(f"{self.address} is not a fellrec block server")
        self._channel, self._stream, self._peer = channel, stream, peer
        # When the run ends or the transport is dropped, its child server stops too.
        weakref.finalize(self, _close, stream, channel, self._child)

    def _start_child(self) -> tuple[str, bytes]:
        """Start a block server for this run alone (loopback, clear text); its address and key."""
        key = secrets.token_hex(16)
        command = [
            sys.executable,
            "-m",
            "fellrec.serving.block_server",
            "--address",
            "127.0.0.1:0",
            "--single-client",
            "--threads",
            str(torch.get_num_threads()),
        ]
        env = {**os.environ, SERVER_KEY_ENV: key}
        self._child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        stdout = self._child.stdout
        for line in stdout:
            if line.startswith(LISTENING):
                # Keep reading (and dropping) what else it prints, so a full pipe never blocks
                # the server; line by line, so nothing accumulates here.
                threading.Thread(target=_discard_lines, args=(stdout,), daemon=True).start()
                return line[len(LISTENING) :].strip(), key.encode()
        code = self._child.wait()
        raise BlockServerError(f"the block server process exited with status {code} at start")

    @property
    def child_process(self) -> subprocess.Popen[str] | None:
        """The run's own block server process, when it started one."""
        return self._child

    def close(self) -> None:
        """Close the connection; a child server stops with it."""
        _close(self._stream, self._channel, self._child)
        self._stream, self._channel, self._child = None, None, None

    def request(self, kind: str, **fields: Any) -> Any:
        """Send one request and return the server's answer (attaching first, once).

        Raises:
            BlockServerError: When the server is gone or does not answer in time.
            RuntimeError: With the server's error when the request failed there.
        """
        self.connect()
        if self._session is None:
            self._attach()
        return self._request(kind, **fields)

    def _request(self, kind: str, **fields: Any) -> Any:
        assert self._stream is not None and self._peer is not None
        request = encode({"kind": kind, **fields})
        try:
            answer = self._stream.ask(request, self.settings.timeout)
        except Exception as error:  # a grpc.RpcError, TimeoutError or EOFError: it is over
            self._stream = None
            if hasattr(error, "code"):
                reason = self._peer.explain(error, connected=True)
            else:
                reason = str(error) or type(error).__name__
            self._lost = (
                f"the block server at {self.address} stopped answering ({reason}); the run "
                "stops here, and its last checkpoint holds its last finished round: resume "
                "from it (--ckpt_path last) once the server is back"
            )
            raise BlockServerError(self._lost) from error
        self.wire_bytes += len(request) + len(answer)
        self.wire_bytes_by_request[kind] += len(request) + len(answer)
        try:
            return rpc.read_answer(answer, f"the block server at {self.address}")
        except rpc.RemoteError as error:
            raise RuntimeError(str(error)) from None
        except WireError as error:
            raise BlockServerError(f"the block server at {self.address}: {error}") from None

    # ------------------------------------------------------------------ session
    def bind(
        self,
        spec: Callable[[], dict[str, Any]],
        adapter_name: Callable[[], str],
        training: Callable[[], bool],
        attached: Callable[[dict[str, Any]], None],
    ) -> None:
        """Say what the server is to build; it is built at the first request (lazily).

        Args:
            spec: ``() -> dict``: what to build (:class:`fellrec.serving.block_host.BlockHostSpec`
                fields), asked at the first request (the model is on its device by then).
            adapter_name: ``() -> str``: the client adapter the next call runs.
            training: ``() -> bool``: whether the middle blocks run in training mode.
            attached: Called once the server built them, with what it built (its server-held
                ``keys`` and their ``parameters`` per client), before any other request.
        """
        self._spec, self._adapter_name, self._training = spec, adapter_name, training
        self._on_attach = attached

    def _attach(self) -> None:
        if self._spec is None:
            raise RuntimeError("the process transport is not bound to a model yet (bind())")
        self._session = self._request("attach", spec=self._spec())
        self._on_attach(self._session)

    # ------------------------------------------------------------------ the contract
    def call_server(
        self,
        server: Server,
        hidden_states: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
    ) -> Tensor:
        """Run the middle blocks in the server process; see :meth:`Transport.call_server`."""
        if not isinstance(server, MiddleCall):
            raise TypeError("model.transport: process runs the middle blocks of a split model")
        return super().call_server(server, hidden_states, attention_mask, position_ids)

    def run_server(
        self, server: Server, received: dict[str, Tensor], grad: bool, input_grad: bool
    ) -> tuple[Tensor, Any]:
        """Run the middle blocks in the server process; see :meth:`Transport.run_server`.

        The graph handle is the call's id: the server keeps the graph until its backward.
        """
        assert isinstance(server, MiddleCall)  # call_server refused anything else
        call = self.new_call_id() if grad else None
        answer = self._forward(call, server, received, grad=grad, input_grad=input_grad)
        return answer["hidden"], (call if grad and answer["graph"] else None)

    def backpropagate_server(self, graph: Any, grad: Tensor) -> Tensor | None:
        """The server backpropagates call ``graph``; see :meth:`Transport.backpropagate_server`."""
        return self._backward(graph, grad)

    def _forward(
        self,
        call: str | None,
        server: MiddleCall,
        received: dict[str, Tensor],
        grad: bool,
        input_grad: bool,
    ) -> dict[str, Any]:
        hidden = received["hidden_states"]
        device = hidden.device
        training = bool(self._training())
        rng = random_state(device) if training else None
        answer: dict[str, Any] = self.request(
            "forward",
            call=call,
            adapter=str(self._adapter_name()),
            training=training,
            grad=grad,
            input_grad=input_grad,
            hidden=_wire(hidden),
            mask=_wire(received["attention_mask"]),
            positions=_wire(received["position_ids"]),
            rng=rng,
            autocast=autocast_state(device),
            cache=self._cache_key(server.cache),
            cache_position=(
                _wire(server.cache_position) if server.cache_position is not None else None
            ),
        )
        if answer["rng"] is not None:
            set_random_state(answer["rng"], device)
        answer["hidden"] = answer["hidden"].to(device)
        return answer

    def _backward(self, call: str, grad: Tensor) -> Tensor | None:
        answer = self.request("backward", call=call, grad=_wire(grad))
        return answer.to(grad.device) if answer is not None else None

    # ------------------------------------------------------------------ generation
    def _cache_key(self, cache: Any) -> str | None:
        """The server-side cache of a client's generation cache (made on first sight)."""
        if cache is None:
            return None
        key = self._caches.get(cache)
        if key is None:
            key = f"cache-{next(self._ids)}"
            self._caches[cache] = key
            reorder = cache.reorder_cache

            def reorder_both(beam_idx: Tensor) -> None:
                # Beam search reorders the client's cache; the server's must follow.
                reorder(beam_idx)
                self.request("reorder", cache=key, beam_idx=_wire(beam_idx))

            cache.reorder_cache = reorder_both
        return key

    def finish_generation(self) -> None:
        """Free the server's KV caches of the generation that just ended."""
        keys = list(self._caches.values())
        self._caches = weakref.WeakKeyDictionary()
        if keys and self._stream is not None:
            self.request("release", caches=keys)

    # ------------------------------------------------------------------ training state
    def new_call_id(self) -> str:
        """A fresh id for a call whose graph the server keeps until its backward."""
        return f"call-{next(self._ids)}"


def _discard_lines(stream: IO[str]) -> None:
    """Read a child's output to its end, dropping every line."""
    for _ in stream:
        pass


def _close(
    stream: peers.StreamCall | None, channel: Any, child: subprocess.Popen[str] | None
) -> None:
    """Close a connection; wait for a child server to stop (it does once its client is gone)."""
    if stream is not None:
        stream.close()
    if channel is not None:
        channel.close()
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
