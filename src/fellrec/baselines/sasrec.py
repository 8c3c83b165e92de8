"""SASRec: self-attention over item ids, the ID-based sequential baseline (Kang & McAuley, 2018).

Item embeddings plus learned positions, a few causal pre-norm transformer blocks, and the output
scored against the same item embeddings; trained with full-softmax cross-entropy at every position
on all training interactions (windows of ``H`` items tiling each training sequence, as the
sequential recommender trains), selected by validation NDCG@10 with early stopping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fellrec.baselines.selection import BestOnValidation, due
from fellrec.data.examples import sliding_window_examples
from fellrec.data.schema import Split
from fellrec.models.sequential import next_item_targets


@dataclass
class SASRecSettings:
    """SASRec's size and training; defaults are the usual small-dataset ones."""

    hidden: int = 64
    """Width of the item embeddings and blocks."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 1
    """Attention heads."""
    dropout: float = 0.2
    """Dropout on embeddings and inside the blocks."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 128
    """Training windows per step."""
    max_epochs: int = 60
    """Upper bound on passes over the training windows."""
    eval_every: int = 2
    """Epochs between validations."""
    patience: int = 4
    """Validations without improvement before stopping."""
    seed: int = 0
    """Seed of initialisation, dropout and batch order."""

    def validate(self) -> None:
        """Check ranges, naming the setting."""
        for name in ("hidden", "layers", "heads", "batch_size", "max_epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"sasrec.hidden ({self.hidden}) must be a multiple of heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sasrec.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.patience < 1:
            raise ValueError("sasrec.lr must be > 0 and sasrec.patience >= 1")


class SASRec(nn.Module):
    """The SASRec network.

    Args:
        num_items: Catalog size ``I`` (item ``i`` is embedding row ``i + 1``; row 0 pads).
        max_length: Longest history ``H`` (number of position embeddings).
        settings: Sizes and dropout.
    """

    def __init__(self, num_items: int, max_length: int, settings: SASRecSettings) -> None:
        super().__init__()
        width = settings.hidden
        self.items = nn.Embedding(num_items + 1, width, padding_idx=0)
        self.positions = nn.Embedding(max_length, width)
        block = nn.TransformerEncoderLayer(
            width,
            settings.heads,
            4 * width,
            settings.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, settings.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(settings.dropout)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.normal_(param, std=0.02)  # small initial scores, as in RecBole

    def forward(self, histories: Tensor) -> Tensor:
        """States after every position ``(B, H, D)`` of histories ``(B, H)`` left-padded -1."""
        length = histories.shape[1]
        ids = histories + 1  # padding (-1) -> row 0
        hidden = self.items(ids) + self.positions(torch.arange(length, device=ids.device))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), 1)
        padding = histories < 0
        hidden = self.blocks(self.dropout(hidden), mask=causal, src_key_padding_mask=padding)
        return self.norm(hidden)

    def scores(self, states: Tensor) -> Tensor:
        """Scores of every item ``(N, I)`` for states ``(N, D)``."""
        return states @ self.items.weight[1:].T


def _pad_left(rows: Sequence[np.ndarray], width: int) -> Tensor:
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for row, items in enumerate(rows):
        items = np.asarray(items[-width:], dtype=np.int64)
        if len(items):
            out[row, width - len(items) :] = torch.from_numpy(items)
    return out


def sasrec_scorer(
    model: SASRec, history_length: int
) -> Callable[[np.ndarray, Sequence[np.ndarray]], Tensor]:
    """Scores of every item after each evaluated user's history (the last ``H`` items)."""

    def score(users: np.ndarray, rows: Sequence[np.ndarray]) -> Tensor:
        with torch.no_grad():
            return model.scores(model(_pad_left(rows, history_length))[:, -1])

    return score


def fit_sasrec(
    split: Split,
    num_items: int,
    history_length: int,
    settings: SASRecSettings,
    validate: Callable[[Callable[[np.ndarray, Sequence[np.ndarray]], Tensor]], float],
) -> tuple[SASRec, dict[str, object]]:
    """Train SASRec on all training interactions; keep the best validation epoch.

    Args:
        split: The split (training sequences).
        num_items: Catalog size.
        history_length: ``H``, the input length (the same histories the other models read).
        settings: Sizes and training settings.
        validate: Scores a scorer on the validation users (higher is better).

    Returns:
        The model with the best validation weights, and a training record
        (``epochs_run``, ``best_epoch``, ``best_validation``, ``validation`` per evaluation).
    """
    settings.validate()
    examples = sliding_window_examples(split.train_sequences, history_length, stride=history_length)
    if len(examples) == 0:
        raise ValueError("SASRec needs training windows; the training split has none")
    histories = torch.from_numpy(examples.histories)
    labels = next_item_targets(histories, torch.from_numpy(examples.targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = SASRec(num_items, history_length, settings)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        order_generator = torch.Generator().manual_seed(settings.seed)
        score = sasrec_scorer(model, history_length)
        selection = BestOnValidation(settings.patience)
        epochs_run = 0
        for epoch in range(settings.max_epochs):
            model.train()
            order = torch.randperm(len(histories), generator=order_generator)
            for batch in torch.split(order, settings.batch_size):
                states = model(histories[batch])
                wanted = labels[batch]
                real = wanted >= 0
                loss = F.cross_entropy(model.scores(states[real]), wanted[real])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            epochs_run = epoch + 1
            if due(epoch, settings.eval_every, settings.max_epochs):
                model.eval()
                if selection.update(epoch, validate(score), model):
                    break
    selection.restore(model)
    model.eval()
    record = selection.record(epochs_run)
    return model, record
