"""The exchanged item components -> each client's item set and counts (pure functions).

Every round a client sends its whole parameter vector (LoRA adapter, then its per-item
components: ID embedding rows, item biases, temperature) and the server has the vector it sent
the client at the round's start. What the server can read from them about the items in the
client's data, per item:

- ``bias``: the biases the client sends. With ``model.items.bias_init: log_popularity`` they start
  at ``log(1 + count) - mean`` of the client's own counts, so the server inverts them exactly
  (:func:`counts_from_log_popularity`: the items at the minimum have count 0).
- ``bias_update``: how the biases changed in the round (sent back minus sent): the cross-entropy
  pushes the items a client trains on up and every other item down.
- ``id_update``: how far each ID-embedding row moved in the round. Under Adam an item that only
  appears in the softmax's denominator gets a small gradient of one sign, which Adam turns into
  full steps, while an item the client trains on gets gradients that partly cancel: the moves
  separate the two groups (the direction is learnt by simulating one client on public data, so
  :func:`~fellrec.attacks.scoring.membership_scores` reports the better direction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fellrec.attacks.scoring import membership_scores

#: Names of the per-item components in a client's parameter keys (``ClientAdapters.keys``).
ID_KEY = "items.id_embedding"
BIAS_KEY = "items.bias"
#: The signals :func:`item_signals` reads, in the order they are reported.
SIGNALS = ("bias", "bias_update", "id_update")


@dataclass(frozen=True)
class ItemLayout:
    """Where the per-item components sit in a client's flat parameter vector.

    Attributes:
        ids: ``(start, stop, num_items, width)`` of the ID-embedding rows, or None.
        bias: ``(start, stop)`` of the item biases, or None.
    """

    ids: tuple[int, int, int, int] | None
    bias: tuple[int, int] | None

    @property
    def has_items(self) -> bool:
        """Whether the vector holds any per-item component."""
        return self.ids is not None or self.bias is not None


def item_layout(keys: Sequence[str], shapes: Sequence[Sequence[int]]) -> ItemLayout:
    """Find the ID rows and biases in a flat vector of parameters ``keys`` of ``shapes``.

    Args:
        keys: The parameters' names, in the vector's order.
        shapes: Their shapes.

    Raises:
        ValueError: When keys and shapes differ in number.
    """
    if len(keys) != len(shapes):
        raise ValueError(f"{len(keys)} parameter names for {len(shapes)} shapes")
    ids: tuple[int, int, int, int] | None = None
    bias: tuple[int, int] | None = None
    offset = 0
    for key, shape in zip(keys, shapes, strict=True):
        size = math.prod(shape)
        if key == ID_KEY and len(shape) == 2:
            ids = (offset, offset + size, int(shape[0]), int(shape[1]))
        elif key == BIAS_KEY and len(shape) == 1:
            bias = (offset, offset + size)
        offset += size
    return ItemLayout(ids, bias)


def item_signals(layout: ItemLayout, sent: Tensor, received: Tensor) -> dict[str, Tensor]:
    """Each signal's score per item ``(I,)`` from one client's round.

    Args:
        layout: Where the item components sit.
        sent: The vector the server sent the client at the round's start ``(P,)``.
        received: The vector the client sent back ``(P,)``.

    Returns:
        The signals of :data:`SIGNALS` the layout has (``bias``, ``bias_update`` need biases,
        ``id_update`` ID rows), each ``(I,)`` float64.
    """
    signals: dict[str, Tensor] = {}
    if layout.bias is not None:
        start, stop = layout.bias
        bias = received[start:stop].double()
        signals["bias"] = bias
        signals["bias_update"] = bias - sent[start:stop].double()
    if layout.ids is not None:
        start, stop, rows, width = layout.ids
        moved = (received[start:stop].double() - sent[start:stop].double()).view(rows, width)
        signals["id_update"] = moved.norm(dim=1)
    return signals


def counts_from_log_popularity(bias: Tensor) -> Tensor:
    """Invert ``bias = log(1 + count) - mean``: ``count = exp(bias - min(bias)) - 1``, rounded.

    Exact when some item has count 0 (the minimum), as in a client that lacks any catalog item.
    """
    bias = bias.double()
    return torch.expm1(bias - bias.min()).round().clamp_min(0)


def score_client(
    layout: ItemLayout,
    sent: Tensor,
    received: Tensor,
    counts: Tensor,
    signals: Sequence[str] = SIGNALS,
) -> dict[str, Any]:
    """Every signal's membership and count scores for one client's round.

    Args:
        layout: Where the item components sit.
        sent: The vector the server sent at the round's start ``(P,)``.
        received: The vector the client sent back ``(P,)``.
        counts: The client's true training interactions per item ``(I,)``.
        signals: The signals to score (default all; the parameters a client starts from have
            no update, only ``bias``).

    Returns:
        ``members`` (true set size), ``items``, ``signals`` (each signal's
        :func:`~fellrec.attacks.scoring.membership_scores` minus the two sizes; ``bias`` adds
        ``counts_exact``: the fraction of items whose count :func:`counts_from_log_popularity`
        recovers exactly) and ``best_auc`` (the highest ``auc_either``).
    """
    counts = counts.double()
    scored: dict[str, dict[str, float]] = {}
    for name, signal in item_signals(layout, sent, received).items():
        if name not in signals:
            continue
        if signal.shape != counts.shape:
            raise ValueError(f"{signal.numel()} items in the parameters, {counts.numel()} counts")
        scores = membership_scores(signal, counts)
        scores.pop("members"), scores.pop("items")
        if name == "bias":
            exact = counts_from_log_popularity(signal) == counts
            scores["counts_exact"] = float(exact.double().mean())
        scored[name] = scores
    aucs = [s["auc_either"] for s in scored.values() if not math.isnan(s["auc_either"])]
    return {
        "members": int((counts > 0).sum()),
        "items": int(counts.numel()),
        "signals": scored,
        "best_auc": max(aucs) if aucs else math.nan,
    }


def score_round(
    layout: ItemLayout,
    sent: Tensor,
    received: Tensor,
    counts: Mapping[int, Tensor],
    clients: Sequence[int],
    signals: Sequence[str] = SIGNALS,
) -> list[dict[str, Any]]:
    """:func:`score_client` for every client of a round.

    Args:
        layout: Where the item components sit.
        sent: What the server sent each client at the round's start ``(S, P)``.
        received: What each client sent back ``(S, P)``.
        counts: Each client's true item counts ``(I,)``, by client id.
        clients: The client id of each row.
        signals: The signals to score.
    """
    return [
        {
            "client": int(client),
            **score_client(layout, sent[row], received[row], counts[client], signals),
        }
        for row, client in enumerate(clients)
    ]


def summarize_signals(clients: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per signal, the lowest, mean and highest ``auc_either`` over a round's clients."""
    summary: dict[str, dict[str, float]] = {}
    for name in SIGNALS:
        values = [
            float(c["signals"][name]["auc_either"])
            for c in clients
            if name in c["signals"] and not math.isnan(c["signals"][name]["auc_either"])
        ]
        if values:
            summary[name] = {
                "min": min(values),
                "mean": sum(values) / len(values),
                "max": max(values),
            }
    return summary
