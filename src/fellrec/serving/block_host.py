"""What a block server holds for one run: the middle blocks, every client's LoRA on them, graphs.

A :class:`BlockHost` is built from a :class:`BlockHostSpec` the run sends when it attaches: the
same base model (by ``model.backbone``), the same LoRA settings and client ids, the same split
plan. It then answers the requests of
:class:`~fellrec.models.process_transport.ProcessTransport`:

============  ==================================================================================
request       what the host does
============  ==================================================================================
forward       run the middle blocks with the named client's adapter (training or eval mode, the
              client's random state and autocast); keep the autograd graph under the call id
backward      backpropagate the call's graph with the client's gradient; return dL/dh_front
reorder       reorder a generation's KV cache with the client's beam indices
release       drop generation caches (and graphs) by key
rows          every client's server-held LoRA values ``(S, Pm)``
load_rows     overwrite them (after aggregation, selection or a resume)
begin_round   snapshot the round-start values (FedProx), clear optimizer moments if asked
step          step a client's optimizer at the client's learning rate (FedProx term added), or
              only clear its gradients when the client skipped the step (diverged)
optimizers    / ``load_optimizers``: the optimizers' states, for the run's checkpoints
stats         live graphs and caches (a dead client's are dropped with its connection)
============  ==================================================================================

Graphs and caches belong to the connection that made them: they are dropped when it closes, when
the client steps (a graph never backpropagated by then never will be), and after ``ttl`` seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fellrec.models.adapters import ClientAdapters, LoRASettings, adapter_name
from fellrec.models.backbone import load_causal_lm, load_encoder
from fellrec.models.process_transport import random_state, set_random_state
from fellrec.models.proximal import add_proximal_gradient
from fellrec.models.server_side import ServerSide
from fellrec.models.split import SplitModel, new_kv_cache
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import model_blocks, num_blocks
from fellrec.models.transport import LocalTransport


@dataclass(frozen=True)
class BlockHostSpec:
    """What a run asks a block server to build (plain values: it crosses as a message).

    Attributes:
        backbone: ``model.backbone`` (the public base model, loaded on the server too).
        causal_lm: Load it as a causal LM (the generative recommender) or as an encoder.
        lora: :class:`~fellrec.models.adapters.LoRASettings` fields.
        clients: The client ids whose adapters the run holds, in slot order.
        k_front: ``model.k_front``.
        k_back: ``model.k_back``.
        causal: Run an encoder causally (the sequential recommender).
        weight_decay: ``model.weight_decay`` of the clients' optimizers.
        device: Where the client runs (the server runs there too).
        base_dropout: ``model.base_dropout`` (None: the base model's own rates).
    """

    backbone: str
    causal_lm: bool
    lora: dict[str, Any]
    clients: tuple[int, ...]
    k_front: int
    k_back: int
    causal: bool
    weight_decay: float
    device: str = "cpu"
    base_dropout: float | None = None


@dataclass
class _Kept:
    """A graph or cache kept for a connection."""

    value: Any
    owner: int
    since: float


class BlockHost:
    """The middle blocks of one run and every client's LoRA on them; see the module docstring.

    Args:
        spec: What to build.
        ttl: Seconds after which an unclaimed graph or cache is dropped.
        clock: Time source (tests pass a fake one).
    """

    def __init__(
        self, spec: BlockHostSpec, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.spec = spec
        self.ttl = ttl
        self.clock = clock
        self.device = torch.device(spec.device)
        if spec.causal_lm:
            model, _ = load_causal_lm(spec.backbone, dropout=spec.base_dropout)
        else:
            model, _ = load_encoder(spec.backbone, dropout=spec.base_dropout)
        model = model.to(self.device)  # type: ignore[arg-type]
        with torch.random.fork_rng(devices=[]):
            # The draws do not matter: the run loads its own values before the first call.
            lora = LoRASettings(**spec.lora)
            self.adapters = ClientAdapters(model, lora, len(spec.clients), list(spec.clients))
        plan = plan_split(num_blocks(self.adapters.model), spec.k_front, spec.k_back)
        self.split = SplitModel(self.adapters.model, plan, LocalTransport(), causal=spec.causal)
        self.blocks = [model_blocks(self.adapters.model)[i] for i in plan.middle]
        self.side = ServerSide(self.adapters, plan)
        self._slots = {adapter_name(c): slot for slot, c in enumerate(spec.clients)}
        self.optimizers = [
            torch.optim.AdamW(
                [{"params": self.side.parameters(s), "lr": 0.0}], weight_decay=spec.weight_decay
            )
            for s in range(len(spec.clients))
        ]
        self.anchors: Tensor | None = None
        self.graphs: dict[str, _Kept] = {}
        self.caches: dict[str, _Kept] = {}

    def describe(self) -> dict[str, Any]:
        """What the run checks after attaching: the server-held keys and their size."""
        return {"keys": list(self.side.keys), "parameters": self.side.num_parameters}

    # ------------------------------------------------------------------ requests
    def handle(self, request: dict[str, Any], owner: int) -> Any:
        """Answer one request of the connection ``owner``.

        Raises:
            ValueError: For an unknown request kind, client, call or cache.
        """
        self.expire()
        kind = request["kind"]
        handler = getattr(self, f"_{kind}", None)
        if kind.startswith("_") or handler is None:
            raise ValueError(f"unknown block server request {kind!r}")
        return handler(request, owner)

    def expire(self) -> None:
        """Drop graphs and caches older than ``ttl`` (their client never came back for them)."""
        now = self.clock()
        for kept in (self.graphs, self.caches):
            for key in [k for k, v in kept.items() if now - v.since > self.ttl]:
                del kept[key]

    def drop_owner(self, owner: int) -> None:
        """Drop everything a connection left (it closed, or its client died)."""
        for kept in (self.graphs, self.caches):
            for key in [k for k, v in kept.items() if v.owner == owner]:
                del kept[key]

    def _slot(self, name: str) -> int:
        if name not in self._slots:
            raise ValueError(f"this block server holds adapters {sorted(self._slots)}, not {name}")
        return self._slots[name]

    @contextlib.contextmanager
    def _autocast(self, dtype: torch.dtype | None) -> Iterator[None]:
        if dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                yield

    def _forward(self, request: dict[str, Any], owner: int) -> dict[str, Any]:
        self.adapters.activate(self._slot(request["adapter"]))
        for block in self.blocks:
            block.train(request["training"])
        if request["rng"] is not None:
            set_random_state(request["rng"], self.device)
        cache = None
        if request["cache"] is not None:
            key = request["cache"]
            if key not in self.caches:
                cache_of_call = new_kv_cache(self.adapters.model.config)
                self.caches[key] = _Kept(cache_of_call, owner, self.clock())
            cache = self.caches[key].value
        position = request["cache_position"]
        inputs = [request[k].to(self.device) for k in ("hidden", "mask", "positions")]
        if position is not None:
            position = position.to(self.device)
        grad = bool(request["grad"])
        with torch.set_grad_enabled(grad), self._autocast(request["autocast"]):
            hidden = inputs[0].detach().requires_grad_(grad and bool(request["input_grad"]))
            out = self.split.middle(hidden, inputs[1], inputs[2], cache, position)
        graph = grad and out.requires_grad
        if graph:
            self.graphs[request["call"]] = _Kept((hidden, out), owner, self.clock())
        rng = random_state(self.device) if request["rng"] is not None else None
        return {"hidden": out.detach().cpu(), "graph": graph, "rng": rng}

    def _backward(self, request: dict[str, Any], owner: int) -> Tensor | None:
        kept = self.graphs.pop(request["call"], None)
        if kept is None:
            raise ValueError(
                f"no graph for {request['call']}: it was backpropagated already, released, or "
                f"older than {self.ttl:g} s"
            )
        hidden, out = kept.value
        torch.autograd.backward(out, request["grad"].to(out.device, out.dtype))
        return hidden.grad.cpu() if hidden.requires_grad else None

    def _reorder(self, request: dict[str, Any], owner: int) -> None:
        if request["cache"] not in self.caches:
            raise ValueError(f"no generation cache {request['cache']} to reorder")
        cache = self.caches[request["cache"]].value
        cache.reorder_cache(request["beam_idx"].to(self.device))

    def _release(self, request: dict[str, Any], owner: int) -> None:
        for key in request.get("caches", []):
            self.caches.pop(key, None)
        for key in request.get("calls", []):
            self.graphs.pop(key, None)

    def _rows(self, request: dict[str, Any], owner: int) -> Tensor:
        return self.side.rows()

    def _load_rows(self, request: dict[str, Any], owner: int) -> None:
        self.side.load_rows(request["rows"])

    def _begin_round(self, request: dict[str, Any], owner: int) -> None:
        self.anchors = self.side.rows().to(self.device)
        if request["reset_optimizers"]:
            for optimizer in self.optimizers:
                optimizer.state.clear()

    def _step(self, request: dict[str, Any], owner: int) -> None:
        slot = self._slot(request["adapter"])
        optimizer = self.optimizers[slot]
        if request["lr"] is not None:
            params = self.side.parameters(slot)
            if request["proximal_mu"] > 0:
                assert self.anchors is not None, "begin_round comes before a FedProx step"
                add_proximal_gradient(params, self.anchors[slot], request["proximal_mu"])
            for group in optimizer.param_groups:
                group["lr"] = request["lr"]
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # A graph of this connection not backpropagated by now never will be.
        for key in [k for k, v in self.graphs.items() if v.owner == owner]:
            del self.graphs[key]

    def _optimizers(self, request: dict[str, Any], owner: int) -> list[dict[str, Any]]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def _load_optimizers(self, request: dict[str, Any], owner: int) -> None:
        for optimizer, state in zip(self.optimizers, request["states"], strict=True):
            optimizer.load_state_dict(state)

    def _stats(self, request: dict[str, Any], owner: int) -> dict[str, int]:
        return {"graphs": len(self.graphs), "caches": len(self.caches)}
