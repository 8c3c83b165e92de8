"""BPR-MF as a recommender baseline: user and item factors from the training interactions.

The same BPR the k-means partition embeds users with (:func:`fellrec.data.mf.train_bpr`), larger
and trained longer, selected by validation NDCG@10 with early stopping. Scores are
``<p_u, q_i> + b_i``; a user's history enters only through the training interactions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fellrec.baselines.selection import BestOnValidation, due
from fellrec.data.mf import BPRModel, train_bpr
from fellrec.data.schema import Split

Scorer = Callable[[np.ndarray, Sequence[np.ndarray]], Tensor]


@dataclass
class BPRSettings:
    """BPR-MF's size and training."""

    dim: int = 64
    """Width of the user and item factors."""
    lr: float = 0.01
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """L2 penalty on the factors of each minibatch."""
    batch_size: int = 4096
    """Interactions per step."""
    max_epochs: int = 200
    """Upper bound on passes over the interactions."""
    eval_every: int = 5
    """Epochs between validations."""
    patience: int = 4
    """Validations without improvement before stopping."""
    seed: int = 0
    """Seed of initialisation, order and negatives."""

    def validate(self) -> None:
        """Check ranges, naming the setting."""
        for name in ("dim", "batch_size", "max_epochs", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"bpr.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("bpr.lr must be > 0 and bpr.weight_decay >= 0")


def bpr_scorer(model: BPRModel) -> Scorer:
    """Scores of every item for the evaluated users (by their user index)."""

    def score(users: np.ndarray, histories: Sequence[np.ndarray]) -> Tensor:
        return model.scores(torch.from_numpy(np.asarray(users, dtype=np.int64)))

    return score


def fit_bpr(
    split: Split,
    num_users: int,
    num_items: int,
    settings: BPRSettings,
    validate: Callable[[Scorer], float],
) -> tuple[BPRModel, dict[str, object]]:
    """Train BPR-MF on the training interactions; keep the best validation epoch.

    Args:
        split: The split (training sequences).
        num_users: Number of users.
        num_items: Catalog size.
        settings: Sizes and training settings.
        validate: Scores a scorer on the validation users (higher is better).

    Returns:
        The model with the best validation factors, and a training record
        (``epochs_run``, ``best_epoch``, ``best_validation``, ``validation`` per evaluation).
    """
    settings.validate()
    selection = BestOnValidation(settings.patience)
    epochs_run = 0

    def after_epoch(epoch: int, model: BPRModel) -> bool:
        nonlocal epochs_run
        epochs_run = epoch + 1
        if not due(epoch, settings.eval_every, settings.max_epochs):
            return False
        return selection.update(epoch, validate(bpr_scorer(model)), model)

    model = train_bpr(
        split.train_sequences,
        num_users,
        num_items,
        settings.dim,
        settings.max_epochs,
        settings.lr,
        settings.seed,
        batch_size=settings.batch_size,
        weight_decay=settings.weight_decay,
        after_epoch=after_epoch,
    )
    selection.restore(model)
    return model, selection.record(epochs_run)
