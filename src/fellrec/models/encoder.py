"""Sequence-encoder recommender (RecFormer-style, discriminative; the paper's encoder backend).

A user is the pooled encoding of their history rendered as text; an item is the pooled encoding of
its own text; the score is the cosine similarity divided by a temperature, and the loss a
cross-entropy over the whole catalog (or over sampled negatives for very large catalogs). By
default the item table is encoded with a client's current model once per round and held fixed
within the round, so gradients flow through the user side only (``item_encoding: round``).

Switches measured in benchmarks/README.md ("Why the text-only recommender did not learn"):
per-item components (:mod:`fellrec.models.item_components`: an ID embedding added to each item's
text vector, an item bias, a learned temperature) and ``item_encoding: step``, which encodes the
batch's targets and sampled negatives inside the training step, so item-side gradients reach the
adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fellrec.models.item_components import ItemComponents, mask_unavailable
from fellrec.models.text import HistoryRenderer

POOLINGS = ("mean", "cls")
#: When item vectors are encoded: once per round (fixed within it) or inside each training step.
ITEM_ENCODINGS = ("round", "step")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states into one vector per sequence.

    Args:
        hidden: Last hidden states ``(B, T, H)``.
        attention_mask: ``(B, T)`` with 1 for real tokens.
        pooling: ``"mean"`` over real tokens or ``"cls"`` (first token).

    Returns:
        ``(B, H)``.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")


Trunk = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SequenceEncoderRecommender(nn.Module):
    """Scores items for users with one text encoder.

    Args:
        encoder: A Hugging Face encoder (possibly peft-wrapped) returning ``last_hidden_state``.
        renderer: Turns item indices into token ids.
        pooling: ``"mean"`` or ``"cls"``.
        temperature: Divides the cosine similarities (0.05 in RecFormer).
        trunk: ``(input_ids, attention_mask) -> last hidden states (B, T, H)``; the split model
            (client front, server middle, client back) under flexible storage. Default: the
            encoder's own forward.
        components: Returns the active client's per-item components, which then score (ID
            vector added to the text vector, bias, learned temperature); ``None`` scores with the
            plain cosine / temperature.
    """

    def __init__(
        self,
        encoder: nn.Module,
        renderer: HistoryRenderer,
        pooling: str = "mean",
        temperature: float = 0.05,
        trunk: Trunk | None = None,
        components: Callable[[], ItemComponents] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.renderer = renderer
        self.pooling = pooling
        self.temperature = temperature
        #: Bool ``(I,)``: items held out of training (``data.new_items``), never a training
        #: negative (:func:`~fellrec.models.item_components.mask_unavailable`); None: none.
        self.unavailable: torch.Tensor | None = None
        # Not registered as a submodule: the trunk runs the encoder's own layers, whose weights
        # must appear once in state dicts and checkpoints.
        object.__setattr__(self, "trunk", trunk)
        object.__setattr__(self, "components", components)

    @property
    def device(self) -> torch.device:
        """Device of the encoder weights."""
        return next(self.encoder.parameters()).device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode token sequences into L2-normalized vectors ``(B, H)``."""
        trunk: Trunk | None = self.__dict__["trunk"]
        if trunk is not None:
            hidden = trunk(input_ids, attention_mask)  # (B, T, H)
        else:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            hidden = hidden.last_hidden_state
        return F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)

    def encode_histories(self, histories: torch.Tensor) -> torch.Tensor:
        """Encode histories ``(B, H_items)`` (``-1`` padded) into user vectors ``(B, H)``."""
        input_ids, attention_mask = self.renderer.render_histories(histories)
        return self.encode(input_ids.to(self.device), attention_mask.to(self.device))

    def encode_items(self, batch_size: int = 64) -> torch.Tensor:
        """Encode the whole catalog ``(I, H)`` with the current (active) adapter, in eval mode.

        Items are encoded in order of token length so batches carry little padding.
        """
        was_training = self.encoder.training
        self.encoder.eval()
        lengths = torch.tensor([len(t) for t in self.renderer.item_tokens])
        order = torch.argsort(lengths, stable=True).tolist()
        chunks = []
        # inference_mode skips autograd bookkeeping (about 10% faster than no_grad); the table is
        # then copied into a normal tensor, because training saves it for the backward pass.
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                ids, mask = self.renderer.render_items(order[start : start + batch_size])
                chunks.append(self.encode(ids.to(self.device), mask.to(self.device)))
            encoded = torch.cat(chunks)
        # Outside inference mode even when called inside one (Lightning's validation loop): an
        # inference tensor cannot be saved for backward and tracks no in-place version.
        with torch.inference_mode(False):
            table = torch.empty(encoded.shape, dtype=encoded.dtype, device=encoded.device)
            table[torch.tensor(order, device=encoded.device)] = encoded
        self.encoder.train(was_training)
        return table

    def encode_item_subset(self, items: torch.Tensor) -> torch.Tensor:
        """Encode some items ``(C, H)`` in the caller's mode, with gradients (step encoding)."""
        ids, mask = self.renderer.render_items(items.tolist())
        return self.encode(ids.to(self.device), mask.to(self.device))

    def _components(self) -> ItemComponents | None:
        provider: Callable[[], ItemComponents] | None = self.__dict__["components"]
        return provider() if provider is not None else None

    def logits(self, users: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, I)`` of every item for every user vector."""
        components = self._components()
        if components is not None:
            return components.logits(users, components.item_vectors(item_table))
        return users @ item_table.T / self.temperature

    def catalog_scores(self, users: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, I)`` of every item for evaluation (``model.items.cold_start`` applied)."""
        components = self._components()
        if components is not None:
            return components.catalog_logits(users, item_table, self.unavailable)
        return self.logits(users, item_table)

    def candidate_loss(
        self, users: torch.Tensor, candidates: torch.Tensor, vectors: torch.Tensor, targets: Tensor
    ) -> torch.Tensor:
        """Cross-entropy ``(B,)`` over shared candidate items (step encoding).

        Args:
            users: User vectors ``(B, H)``.
            candidates: Item indices ``(C,)`` (unique), scored for every user.
            vectors: Their text vectors ``(C, H)``, encoded in the step.
            targets: Each user's target as a position in ``candidates`` ``(B,)``.
        """
        components = self._components()
        if components is not None:
            hybrid = components.item_vectors(vectors, candidates)
            scores = components.logits(users, hybrid, candidates)
        else:
            scores = users @ vectors.T / self.temperature
        scores = mask_unavailable(scores, self.unavailable, candidates)
        return F.cross_entropy(scores, targets, reduction="none")

    def loss(
        self,
        users: torch.Tensor,
        item_table: torch.Tensor,
        targets: torch.Tensor,
        num_negatives: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-example cross-entropy ``(B,)`` of the target item.

        Args:
            users: User vectors ``(B, H)``.
            item_table: Item vectors ``(I, H)`` (fixed within a round).
            targets: Target item indices ``(B,)``.
            num_negatives: If set, the softmax runs over the target and this many uniformly
                sampled items instead of the whole catalog.
            generator: Random generator for the negatives.

        Returns:
            The loss of every example (no reduction, so callers can weigh shards exactly).
        """
        if num_negatives is None:
            logits = mask_unavailable(self.logits(users, item_table), self.unavailable)
            return F.cross_entropy(logits, targets, reduction="none")
        negatives = torch.randint(
            item_table.shape[0], (users.shape[0], num_negatives), generator=generator
        ).to(users.device)  # (B, K)
        candidates = torch.cat([targets.unsqueeze(1), negatives], dim=1)  # (B, 1 + K)
        components = self._components()
        if components is not None:
            vectors = components.item_vectors(item_table[candidates], candidates)
            scores = components.logits(users, vectors, candidates)
        else:
            scores = torch.einsum("bh,bkh->bk", users, item_table[candidates]) / self.temperature
        # A sampled negative equal to the target must not count as a competitor.
        scores[:, 1:] = scores[:, 1:].masked_fill(negatives == targets.unsqueeze(1), float("-inf"))
        scores[:, 1:] = mask_unavailable(scores[:, 1:], self.unavailable, negatives)
        zeros = torch.zeros(users.shape[0], dtype=torch.long, device=users.device)
        return F.cross_entropy(scores, zeros, reduction="none")
