"""The popularity baseline, and the evaluation of any scorer through the same ranking code.

Popularity ranks every item by its number of training interactions; :func:`evaluate_scorer` runs
any scorer (BPR, SASRec, ...) through the same masking and metrics, so every baseline is measured
exactly like the federated models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fellrec.data.schema import EvalUsers
from fellrec.metrics.ranking import METRIC_NAMES, check_ks, index_mask, ranking_metrics


def popularity_scores(train_sequences: Sequence[np.ndarray], num_items: int) -> Tensor:
    """Number of training interactions of each item.

    Args:
        train_sequences: Per user, the item indices of their training interactions.
        num_items: Number of items ``I``.

    Returns:
        Interaction counts, float32, shape ``(I,)``.

    Raises:
        ValueError: If an item index is outside ``0..num_items-1``.
    """
    arrays = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in train_sequences]
    items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)  # (L,)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        bad = int(items[(items < 0) | (items >= num_items)][0])
        raise ValueError(f"item index {bad} is outside 0..{num_items - 1}")
    counts = np.bincount(items, minlength=num_items)  # (I,)
    return torch.from_numpy(counts).to(torch.float32)


def evaluate_popularity(
    train_sequences: Sequence[np.ndarray],
    eval_users: EvalUsers,
    num_items: int,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Per-user ranking metrics of the popularity baseline.

    Every user gets the same ranking (most interacted first), minus the items they already
    consumed. Many items share a count, so ties are broken toward the lower item index to make the
    result independent of ``torch.topk``'s tie order.

    Args:
        train_sequences: Per user, the item indices of their training interactions.
        eval_users: The evaluated users with their targets and consumed items.
        num_items: Number of items ``I``.
        ks: Cut-offs K.
        batch_size: Users scored at once; bounds memory at about ``batch_size * I`` scores.

    Returns:
        The output of :func:`~fellrec.metrics.ranking.ranking_metrics`, each tensor of shape
        ``(U,)`` aligned with ``eval_users.users``.

    Raises:
        ValueError: If ``batch_size`` is not positive or an input is invalid for
            :func:`~fellrec.metrics.ranking.ranking_metrics`.
    """
    counts = popularity_scores(train_sequences, num_items).to(torch.float64)  # (I,)
    # Counts are integers, so subtracting index / I (< 1) keeps the count order and ranks equal
    # counts by ascending index. float64 keeps the fraction exact enough for any realistic count.
    scores = counts - torch.arange(num_items, dtype=torch.float64) / num_items  # (I,)

    def score(users: np.ndarray, histories: Sequence[np.ndarray]) -> Tensor:
        return scores.expand(len(users), num_items)  # a view, no copy

    return evaluate_scorer(score, eval_users, num_items, ks, batch_size)


def evaluate_local_popularity(
    train_sequences: Sequence[np.ndarray],
    eval_users: EvalUsers,
    num_items: int,
    user_clients: np.ndarray,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, Tensor]:
    """Per-user metrics of a popularity baseline that every client computes on its own data.

    Each client ranks items by its own users' training interactions (what a silo can count
    without anyone else's data) and evaluates its own users with it.

    Args:
        train_sequences: Per user, the item indices of their training interactions.
        eval_users: The evaluated users (of every client).
        num_items: Number of items ``I``.
        user_clients: The client of every user ``(num_users,)``.
        ks: Cut-offs K.

    Returns:
        As :func:`evaluate_popularity`, each tensor ``(U,)`` aligned with ``eval_users.users``.
    """
    eval_clients = np.asarray(user_clients)[eval_users.users]
    result = {
        f"{name}@{k}": torch.zeros(len(eval_users))
        for k in check_ks(ks, num_items)
        for name in METRIC_NAMES
    }
    for client in np.unique(eval_clients):
        members = np.flatnonzero(np.asarray(user_clients) == client)
        positions = np.flatnonzero(eval_clients == client)
        own = [train_sequences[int(user)] for user in members]
        local = evaluate_popularity(own, eval_users.select(positions), num_items, ks)
        for name, values in local.items():
            result[name][torch.from_numpy(positions)] = values
    return result


#: Scores every item for a batch of evaluated users: ``(user indices (B,), their histories)``
#: -> ``(B, I)``, higher is better.
Scorer = Callable[[np.ndarray, Sequence[np.ndarray]], Tensor]


def evaluate_scorer(
    score: Scorer,
    eval_users: EvalUsers,
    num_items: int,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Per-user ranking metrics of any scorer, with consumed items masked.

    Args:
        score: Scores every item for a batch of users (given their indices and histories).
        eval_users: The evaluated users with their targets and consumed items.
        num_items: Number of items ``I``.
        ks: Cut-offs K.
        batch_size: Users scored at once; bounds memory at about ``batch_size * I`` scores.

    Returns:
        The output of :func:`~fellrec.metrics.ranking.ranking_metrics`, each tensor of shape
        ``(U,)`` aligned with ``eval_users.users``.

    Raises:
        ValueError: If ``batch_size`` is not positive or an input is invalid for
            :func:`~fellrec.metrics.ranking.ranking_metrics`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ks = check_ks(ks, num_items)
    num_users = len(eval_users)
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, num_users, batch_size):
        stop = min(start + batch_size, num_users)
        targets = index_mask(eval_users.targets[start:stop], num_items)  # (B, I)
        consumed = index_mask(eval_users.consumed[start:stop], num_items)  # (B, I)
        batch_scores = score(eval_users.users[start:stop], eval_users.histories[start:stop])
        metrics = ranking_metrics(batch_scores, targets, consumed, ks)
        for name, value in metrics.items():
            chunks.setdefault(name, []).append(value.to(torch.float32))
    if not chunks:
        # No evaluated user: still return every key, with empty tensors.
        return {f"{name}@{k}": torch.zeros(0) for k in ks for name in METRIC_NAMES}
    return {name: torch.cat(parts) for name, parts in chunks.items()}
