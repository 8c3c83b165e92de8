"""The wire between a split model's client side and its server side.

Only these tensors cross (method.md, section 5; architecture.md, "Split execution and transports"):

============  =========  ==============================================================
direction     phase      tensors
============  =========  ==============================================================
to_server     forward    ``hidden_states`` (B, T, H), ``attention_mask`` (B, T), ``position_ids``
to_client     forward    ``hidden_states`` (B, T, H)
to_server     backward   ``grad_hidden_states`` (dL/dh_middle)
to_client     backward   ``grad_hidden_states`` (dL/dh_front), only if h_front requires grad
============  =========  ==============================================================

Token ids, labels, logits and losses never cross. :meth:`Transport.call_server` is differentiable
with respect to the client's hidden states and the server's parameters: the server keeps its own
autograd graph and backpropagates it when the client's gradient arrives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: A server: ``(hidden_states, attention_mask, position_ids) -> hidden_states``.
Server = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class MiddleCall:
    """A call of a split model's middle blocks: a :data:`Server` that says what it runs.

    In process it is simply called; a transport to another process sends what it names instead
    (the server there holds the same blocks): the generation KV cache the call continues (the
    server keeps its own blocks' part of it) and the cache positions.

    Attributes:
        run: ``(hidden_states, attention_mask, position_ids, cache, cache_position) -> h``.
        cache: The client's KV cache of this generation (None: no cache, e.g. training).
        cache_position: The new tokens' cache positions (older transformers), or None.
    """

    run: Callable[[Tensor, Tensor, Tensor, Any, Tensor | None], Tensor]
    cache: Any = None
    cache_position: Tensor | None = None

    def __call__(
        self, hidden_states: Tensor, attention_mask: Tensor, position_ids: Tensor
    ) -> Tensor:
        """Run the middle blocks in this process."""
        return self.run(
            hidden_states, attention_mask, position_ids, self.cache, self.cache_position
        )


DIRECTIONS = ("to_server", "to_client")
PHASES = ("forward", "backward")


@dataclass
class Payload:
    """One message on the wire.

    Attributes:
        direction: ``"to_server"`` or ``"to_client"``.
        phase: ``"forward"`` or ``"backward"``.
        tensors: The tensors it carries, by name.
    """

    direction: str
    phase: str
    tensors: dict[str, Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data carried (``numel * element_size``; no framing)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Transport(ABC):
    """Carries one micro-batch to the server and back, forward and backward, and counts bytes.

    Counters are cheap (tensor metadata only), so every transport counts all the time.
    """

    def __init__(self) -> None:
        self.bytes_sent: dict[tuple[str, str], int] = {}
        self.calls = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the byte counters and the call count."""
        self.bytes_sent = {(d, p): 0 for d in DIRECTIONS for p in PHASES}
        self.calls = 0

    def stats(self) -> dict[str, int]:
        """Traffic since the last reset.

        Returns:
            ``calls`` (server calls), ``bytes_forward``, ``bytes_backward``, ``bytes_to_server``,
            ``bytes_to_client`` and ``bytes_total``.
        """
        sent = self.bytes_sent
        return {
            "calls": self.calls,
            "bytes_forward": sent["to_server", "forward"] + sent["to_client", "forward"],
            "bytes_backward": sent["to_server", "backward"] + sent["to_client", "backward"],
            "bytes_to_server": sent["to_server", "forward"] + sent["to_server", "backward"],
            "bytes_to_client": sent["to_client", "forward"] + sent["to_client", "backward"],
            "bytes_total": sum(sent.values()),
        }

    def send(self, payload: Payload) -> Payload:
        """Count (and, in subclasses, deliver) a payload; returns what arrives."""
        self.bytes_sent[payload.direction, payload.phase] += payload.nbytes
        return payload

    # Optional hooks: a transport in process keeps nothing on a server, so they do nothing.
    def finish_generation(self) -> None:  # noqa: B027
        """A generation ended: free what the server kept for it (nothing, in process)."""

    def close(self) -> None:  # noqa: B027
        """Release the connection to the server, if any (nothing, in process)."""

    def call_server(
        self,
        server: Server,
        hidden_states: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
    ) -> Tensor:
        """Run the server on a micro-batch, counting what crosses.

        The forward and backward messages, the autograd seam and the counting are the same for
        every transport; each transport says how the server runs (:meth:`run_server`) and how
        its kept graph is backpropagated (:meth:`backpropagate_server`).

        Args:
            server: The server's blocks: ``(hidden_states, attention_mask, position_ids) -> h``.
            hidden_states: Client output ``(B, T, H)``.
            attention_mask: 2-D mask ``(B, T)``, 1 for real tokens.
            position_ids: ``(B, T)``.

        Returns:
            The server's hidden states ``(B, T, H)``, differentiable with respect to
            ``hidden_states`` and the server's parameters when gradients are enabled.
        """
        self.calls += 1
        if not torch.is_grad_enabled():
            # Evaluation (no_grad / inference_mode): no graph on either side, just the two messages.
            received = _to_server(self, hidden_states, attention_mask, position_ids)
            out, _ = self.run_server(server, received, grad=False, input_grad=False)
            return _to_client(self, out)
        # The anchor makes the call's output require grad even when the client's hidden states do
        # not (no trainable client front), so the server's own parameters still get gradients.
        anchor = torch.empty(0, device=hidden_states.device, requires_grad=True)
        result: Tensor = _ServerCall.apply(
            hidden_states, attention_mask, position_ids, anchor, self, server
        )
        return result

    @abstractmethod
    def run_server(
        self, server: Server, received: dict[str, Tensor], grad: bool, input_grad: bool
    ) -> tuple[Tensor, Any]:
        """Run the server on the tensors it received (the forward exchange).

        Args:
            server: The server's blocks.
            received: ``hidden_states`` (detached), ``attention_mask`` and ``position_ids``.
            grad: Whether the server keeps a graph for a backward (gradients are enabled).
            input_grad: Whether the backward is to return the gradient of ``hidden_states``.

        Returns:
            The server's output hidden states ``(B, T, H)``, detached, and the handle of the
            graph the server keeps for :meth:`backpropagate_server` (None: nothing to
            backpropagate, because ``grad`` is off or nothing on the server is trainable).
        """

    @abstractmethod
    def backpropagate_server(self, graph: Any, grad: Tensor) -> Tensor | None:
        """Backpropagate a kept server graph (the backward exchange).

        Accumulates the server's parameter gradients, and frees the graph.

        Args:
            graph: The handle :meth:`run_server` returned.
            grad: dL/dh_middle, the client's gradient of the server's output.

        Returns:
            dL/dh_front, the gradient of the server's input, or None if it was not asked for.
        """


class LocalTransport(Transport):
    """In-process transport: the default and the test path.

    Args:
        record: Keep every payload in :attr:`payloads` (tests inspect what crossed).
    """

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        self.record = record
        self.payloads: list[Payload] = []

    def send(self, payload: Payload) -> Payload:
        """Count the payload, and keep it if recording."""
        if self.record:
            self.payloads.append(payload)
        return super().send(payload)

    def run_server(
        self, server: Server, received: dict[str, Tensor], grad: bool, input_grad: bool
    ) -> tuple[Tensor, Any]:
        """Run ``server`` in process; see :meth:`Transport.run_server`.

        The graph handle is the server's input and output: the server's graph is this process's.
        """
        if not grad:
            out = server(
                received["hidden_states"], received["attention_mask"], received["position_ids"]
            )
            return out, None
        server_input = received["hidden_states"].detach().requires_grad_(input_grad)
        with torch.enable_grad():
            server_output = server(
                server_input, received["attention_mask"], received["position_ids"]
            )
        graph = (server_input, server_output) if server_output.requires_grad else None
        return server_output.detach(), graph

    def backpropagate_server(self, graph: Any, grad: Tensor) -> Tensor | None:
        """Backpropagate the graph in process; see :meth:`Transport.backpropagate_server`."""
        server_input, server_output = graph
        # Accumulates the server's parameter grads (and the input's grad) on its own graph.
        torch.autograd.backward(server_output, grad)
        return server_input.grad if server_input.requires_grad else None


def _to_server(
    transport: Transport, hidden_states: Tensor, attention_mask: Tensor, position_ids: Tensor
) -> dict[str, Tensor]:
    """Send the forward message to the server; return the tensors it receives."""
    payload = Payload(
        "to_server",
        "forward",
        {
            "hidden_states": hidden_states.detach(),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        },
    )
    return transport.send(payload).tensors


def _to_client(transport: Transport, hidden_states: Tensor) -> Tensor:
    """Send the server's output back to the client; return the tensor it receives."""
    payload = Payload("to_client", "forward", {"hidden_states": hidden_states})
    return transport.send(payload).tensors["hidden_states"]


class _ServerCall(torch.autograd.Function):
    """Autograd seam: the client graph ends here, the server keeps its own graph.

    One for every transport: the transport runs the server (:meth:`Transport.run_server`) and
    backpropagates the graph it kept (:meth:`Transport.backpropagate_server`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden_states: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        anchor: Tensor,
        transport: Transport,
        server: Server,
    ) -> Tensor:
        received = _to_server(transport, hidden_states, attention_mask, position_ids)
        wants_input_grad = bool(ctx.needs_input_grad[0])
        out, graph = transport.run_server(server, received, grad=True, input_grad=wants_input_grad)
        ctx.transport = transport
        ctx.consumed = False
        ctx.graph = graph
        if graph is None and not wants_input_grad:
            # Nothing on either side is trainable: the result is a constant, as unsplit.
            ctx.mark_non_differentiable(out)
        return _to_client(transport, out)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        transport: Transport = ctx.transport
        grad = gradient_to_server(transport, ctx, grad_output)
        # Free the server graph with this call, whatever happens below.
        graph, ctx.graph = ctx.graph, None
        grad_input = transport.backpropagate_server(graph, grad) if graph is not None else None
        return gradient_to_client(transport, grad_input), None, None, None, None, None


def gradient_to_server(transport: Transport, ctx: Any, grad_output: Tensor) -> Tensor:
    """Send dL/dh_middle to the server (counted); refuse a second backward of the same call.

    Args:
        transport: The call's transport.
        ctx: The call's autograd context (its ``consumed`` flag is set here).
        grad_output: The client's gradient of the server's output.
    """
    grad = transport.send(
        Payload("to_server", "backward", {"grad_hidden_states": grad_output})
    ).tensors["grad_hidden_states"]
    if ctx.consumed:
        raise RuntimeError(
            "the server graph of this split call was already backpropagated: a second "
            "backward through a transport (retain_graph=True) is not supported"
        )
    ctx.consumed = True
    return grad


def gradient_to_client(transport: Transport, grad_input: Tensor | None) -> Tensor | None:
    """Send dL/dh_front back to the client (counted), when the client's input needs it."""
    if grad_input is None:
        return None
    return transport.send(
        Payload("to_client", "backward", {"grad_hidden_states": grad_input})
    ).tensors["grad_hidden_states"]
