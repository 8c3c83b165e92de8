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

Without an address fellrec starts a block server as a child process for the run (and stops it
at the end); with ``model.block_server.address`` it uses a running one
(``fellrec serve-blocks``), authenticated by the key in ``FELLREC_SERVER_KEY``.
"""

from __future__ import annotations

import itertools
import os
import pickle
import secrets
import subprocess
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from typing import IO, Any

import torch
from torch import Tensor

from fellrec import process_links
from fellrec.models.transport import (
    MiddleCall,
    Payload,
    Server,
    Transport,
    gradient_to_client,
    gradient_to_server,
)

#: Environment variable with the key a block server and its clients share.
SERVER_KEY_ENV = "FELLREC_SERVER_KEY"
#: The line a block server prints once it listens (followed by ``host:port``).
LISTENING = "fellrec block server listening on "


class BlockServerError(ConnectionError):
    """The block server is gone or did not answer: the run cannot go on without it."""


@dataclass
class BlockServerSettings:
    """Where the block server of ``model.transport: process`` runs."""

    address: str | None = None
    """``host:port`` of a running block server (``fellrec serve-blocks``; the key in
    ``FELLREC_SERVER_KEY``); None starts one as a child process of the run."""
    timeout: float = 600.0
    """Seconds to wait for one answer before the run stops with an error."""

    def validate(self) -> None:
        """Refuse an address that is not ``host:port`` or a timeout that is not positive."""
        if self.address is not None:
            process_links.parse_address(self.address, "model.block_server.address")
        if self.timeout <= 0:
            raise ValueError(f"model.block_server.timeout must be > 0, got {self.timeout}")


def _wire(tensor: Tensor) -> Tensor:
    """A compact CPU copy: pickling a view would send its whole underlying storage."""
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
        self.settings = settings if settings is not None else BlockServerSettings()
        self.settings.validate()
        self.address = self.settings.address
        self._connection: Connection | None = None
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
        #: Bytes that went over the connection (pickled messages, both ways), and by request.
        self.wire_bytes = 0
        self.wire_bytes_by_request: Counter[str] = Counter()

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Connect to the block server (starting a child one when no address is set)."""
        if self._connection is not None:
            return
        if self._lost is not None:
            raise BlockServerError(self._lost)
        if self.address is None:
            self.address, key = self._start_child()
        else:
            key = process_links.key_from_environment(
                SERVER_KEY_ENV, "the block server and the runs that use it"
            )
        try:
            connection = Client(
                process_links.parse_address(self.address, "model.block_server.address"),
                authkey=key,
            )
        except ConnectionRefusedError as error:
            raise BlockServerError(
                f"no fellrec block server at {self.address} (model.block_server.address): start "
                f"it with `fellrec serve-blocks --address {self.address}` and the same "
                f"{SERVER_KEY_ENV}"
            ) from error
        except AuthenticationError as error:
            raise BlockServerError(
                f"the block server at {self.address} refused this run's key ({SERVER_KEY_ENV})"
            ) from error
        self._connection = connection
        # When the run ends or the transport is dropped, its child server stops too.
        weakref.finalize(self, _close, connection, self._child)

    def _start_child(self) -> tuple[str, bytes]:
        """Start a block server for this run alone; its address and key."""
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
        _close(self._connection, self._child)
        self._connection, self._child = None, None

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
        assert self._connection is not None
        try:
            sent = process_links.send(self._connection, {"kind": kind, **fields})
            if not self._connection.poll(self.settings.timeout):
                raise TimeoutError(f"no answer in {self.settings.timeout:g} s")
            data = self._connection.recv_bytes()
        except (OSError, EOFError) as error:
            self._connection = None
            reason = str(error) or type(error).__name__
            self._lost = (
                f"the block server at {self.address} stopped answering ({reason}); the run "
                "stops here, and its last checkpoint holds its last finished round: resume "
                "from it (--ckpt_path last) once the server is back"
            )
            raise BlockServerError(self._lost) from error
        self.wire_bytes += sent + len(data)
        self.wire_bytes_by_request[kind] += sent + len(data)
        status, value = pickle.loads(data)
        if status != "ok":
            raise RuntimeError(f"the block server at {self.address} failed: {value}")
        return value

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
        self.calls += 1
        if not torch.is_grad_enabled():
            received = self._count_forward(hidden_states, attention_mask, position_ids)
            out = self._forward(None, server, received, grad=False, input_grad=False)["hidden"]
            return self._count_result(out)
        anchor = torch.empty(0, device=hidden_states.device, requires_grad=True)
        result: Tensor = _RemoteCall.apply(
            hidden_states, attention_mask, position_ids, anchor, self, server
        )
        return result

    def _count_forward(self, hidden: Tensor, mask: Tensor, positions: Tensor) -> dict[str, Tensor]:
        payload = Payload(
            "to_server",
            "forward",
            {"hidden_states": hidden.detach(), "attention_mask": mask, "position_ids": positions},
        )
        return self.send(payload).tensors

    def _count_result(self, hidden: Tensor) -> Tensor:
        return self.send(Payload("to_client", "forward", {"hidden_states": hidden})).tensors[
            "hidden_states"
        ]

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
        if keys and self._connection is not None:
            self.request("release", caches=keys)

    # ------------------------------------------------------------------ training state
    def new_call_id(self) -> str:
        """A fresh id for a call whose graph the server keeps until its backward."""
        return f"call-{next(self._ids)}"


def _discard_lines(stream: IO[str]) -> None:
    """Read a child's output to its end, dropping every line."""
    for _ in stream:
        pass


def _close(connection: Connection | None, child: subprocess.Popen[str] | None) -> None:
    """Close a connection; wait for a child server to stop (it does once its client is gone)."""
    if connection is not None:
        connection.close()
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _RemoteCall(torch.autograd.Function):
    """Autograd seam: the client graph ends here; the server keeps its graph by call id."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_states: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        anchor: Tensor,
        transport: ProcessTransport,
        server: MiddleCall,
    ) -> Tensor:
        received = transport._count_forward(hidden_states, attention_mask, position_ids)
        wants_input_grad = bool(ctx.needs_input_grad[0])
        call = transport.new_call_id()
        answer = transport._forward(call, server, received, grad=True, input_grad=wants_input_grad)
        ctx.transport, ctx.call, ctx.consumed = transport, call, False
        ctx.has_graph = bool(answer["graph"])
        out = answer["hidden"]
        if not ctx.has_graph and not wants_input_grad:
            ctx.mark_non_differentiable(out)
        return transport._count_result(out)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        transport: ProcessTransport = ctx.transport
        grad = gradient_to_server(transport, ctx, grad_output)
        grad_input = transport._backward(ctx.call, grad) if ctx.has_graph else None
        return gradient_to_client(transport, grad_input), None, None, None, None, None
