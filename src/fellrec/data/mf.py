"""A small BPR matrix factorisation, used to embed users for the K-means client partition."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def train_bpr_embeddings(
    train_sequences: Sequence[np.ndarray],
    num_users: int,
    num_items: int,
    dim: int = 32,
    epochs: int = 30,
    lr: float = 0.05,
    seed: int = 0,
    *,
    batch_size: int = 4096,
    weight_decay: float = 1e-4,
) -> np.ndarray:
    """Train BPR-MF on the training interactions and return the user embeddings.

    See :func:`train_bpr` for the training; this keeps only the user vectors.

    Returns:
        User embeddings, float32, shape ``(num_users, dim)``. Users without training
        interactions keep their small random initialisation.
    """
    model = train_bpr(
        train_sequences,
        num_users,
        num_items,
        dim,
        epochs,
        lr,
        seed,
        batch_size=batch_size,
        weight_decay=weight_decay,
    )
    return model.user.detach().numpy().astype(np.float32, copy=True)


def train_bpr(
    train_sequences: Sequence[np.ndarray],
    num_users: int,
    num_items: int,
    dim: int = 32,
    epochs: int = 30,
    lr: float = 0.05,
    seed: int = 0,
    *,
    batch_size: int = 4096,
    weight_decay: float = 1e-4,
    after_epoch: Callable[[int, BPRModel], bool] | None = None,
) -> BPRModel:
    """Train BPR-MF on the training interactions.

    Each epoch visits every interaction once in a seeded random order, in minibatches; each
    positive ``(u, i)`` is paired with one item drawn uniformly at random as its negative (a
    sampled negative is occasionally a positive too, which BPR tolerates). All randomness comes
    from one ``torch.Generator`` seeded with ``seed``, so the result is reproducible.

    Args:
        train_sequences: Per user index, the training items.
        num_users: Number of users (rows of the result).
        num_items: Number of items.
        dim: Embedding dimension.
        epochs: Passes over the interactions (at most, see ``after_epoch``).
        lr: Adam learning rate.
        seed: Seed of initialisation, shuffling and negative sampling.
        batch_size: Interactions per minibatch.
        weight_decay: L2 penalty on the embeddings used in each minibatch.
        after_epoch: Called with ``(epoch, model)`` after every epoch (0-based); returning True
            stops training (e.g. early stopping on validation).

    Returns:
        The trained model.

    Raises:
        ValueError: If there is no training interaction or a size argument is not positive.
    """
    if min(num_users, num_items, dim, batch_size) < 1 or epochs < 0:
        raise ValueError(
            f"need positive sizes, got num_users={num_users}, num_items={num_items}, dim={dim}, "
            f"batch_size={batch_size}, epochs={epochs}"
        )
    users, items = _interaction_tensors(train_sequences)
    if len(users) == 0:
        raise ValueError("BPR needs at least one training interaction, got none")
    generator = torch.Generator().manual_seed(seed)
    model = BPRModel(num_users, num_items, dim, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with _single_thread():
        for epoch in range(epochs):
            order = torch.randperm(len(users), generator=generator)
            negatives = torch.randint(num_items, (len(users),), generator=generator)
            for batch in torch.split(order, batch_size):
                loss = model.loss(users[batch], items[batch], negatives[batch], weight_decay)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if after_epoch is not None and after_epoch(epoch, model):
                break
    return model


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous setting afterwards.

    The minibatch ops here are tiny: extra threads only add scheduling overhead (several times
    slower on a busy 2-core machine), and one thread makes gradient accumulation order fixed.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _interaction_tensors(
    train_sequences: Sequence[np.ndarray],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the sequences into aligned user and item index tensors."""
    lengths = np.array([len(s) for s in train_sequences], dtype=np.int64)
    if lengths.sum() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
    return torch.from_numpy(users), torch.from_numpy(items)


class BPRModel(nn.Module):
    """User and item embeddings plus an item bias; score(u, i) = <p_u, q_i> + b_i."""

    def __init__(self, num_users: int, num_items: int, dim: int, generator: torch.Generator):
        super().__init__()
        # Parameters are drawn from the seeded generator; nn.Embedding's default initialisation
        # would draw from (and advance) torch's global RNG.
        self.user = nn.Parameter(0.1 * torch.randn(num_users, dim, generator=generator))
        self.item = nn.Parameter(0.1 * torch.randn(num_items, dim, generator=generator))
        self.bias = nn.Parameter(torch.zeros(num_items, 1))

    @torch.no_grad()
    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for ``users`` ``(B, I)``."""
        return self.user[users] @ self.item.T + self.bias.T

    def loss(
        self,
        users: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
        weight_decay: float,
    ) -> torch.Tensor:
        """Mean BPR loss ``-log sigmoid(x_ui - x_uj)`` plus L2 on the embeddings involved."""
        p = nn.functional.embedding(users, self.user)
        q_pos = nn.functional.embedding(positives, self.item)
        q_neg = nn.functional.embedding(negatives, self.item)
        b_pos = nn.functional.embedding(positives, self.bias).squeeze(1)
        b_neg = nn.functional.embedding(negatives, self.bias).squeeze(1)
        margin = (p * (q_pos - q_neg)).sum(1) + b_pos - b_neg
        l2 = p.square().sum(1) + q_pos.square().sum(1) + q_neg.square().sum(1)
        return -nn.functional.logsigmoid(margin).mean() + weight_decay * l2.mean()
