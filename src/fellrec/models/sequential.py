"""Sequential recommender: the LLM reads a history as a sequence of item tokens.

Each item of a user's history enters the language model as **one token**, its hybrid item vector
(:mod:`fellrec.models.item_components`): the base model's embedding of the item's text (frozen,
computed once, centered) plus the client's trainable ID embedding of the item. The model runs
causally (an encoder gets a causal mask), so the state at every position is the user after the
items so far, and every position predicts the next item: one forward pass over a window of ``H``
items trains ``H`` targets (``data.window_stride`` equal to ``H`` then visits every training
interaction once per epoch). Scores are the cosine of that state with every item vector (the same
vectors as the input tokens) over a learned temperature, plus the item's bias.

Compared with the RecFormer-style encoder (:mod:`fellrec.models.encoder`), which reads the
history as text, this is ~8x fewer tokens per history (one per item instead of its title's words)
and ~Hx more targets per pass, and it sees the collaborative signal through the ID embeddings;
measured on MovieLens-100K in benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fellrec.models.adapters import ClientAdapters
from fellrec.models.encoder import pool
from fellrec.models.item_components import ItemComponents, mask_unavailable

#: A trunk over item ids: ``(item_ids (B, T), attention_mask (B, T)) -> states (B, T, H)``.
ItemTrunk = Callable[[Tensor, Tensor], Tensor]


def next_item_targets(histories: Tensor, targets: Tensor) -> Tensor:
    """The item each history position predicts: the next history item, and the target last.

    Args:
        histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.
        targets: The item after the history ``(B,)``.

    Returns:
        ``(B, H)``: position ``p`` holds ``histories[:, p + 1]`` and the last one ``targets``;
        ``-1`` where the input position is padding.
    """
    shifted = torch.cat([histories[:, 1:], targets.unsqueeze(1)], dim=1)  # (B, H)
    return shifted.masked_fill(histories < 0, -1)


@torch.no_grad()
def encode_texts(
    trunk: Callable[[Tensor, Tensor], Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    pooling: str,
) -> Tensor:
    """Pooled final states of tokenized texts, batch by batch ``(N, H)`` (float32).

    Args:
        trunk: ``(input_ids, attention_mask) -> (B, T, H)`` of the base model.
        batches: ``(input_ids, attention_mask)`` pairs.
        pooling: ``mean`` or ``cls``.
    """
    chunks = [pool(trunk(ids, mask), mask, pooling).float() for ids, mask in batches]
    return torch.cat(chunks)


class SequentialRecommender(nn.Module):
    """Scores items for item-token histories with a causal language model.

    Args:
        adapters: The clients' adapters, with one :class:`ItemComponents` per slot as their
            client modules (the active slot's components embed and score).
        text_table: Centered, normalized text vectors of every item ``(I, H)`` (frozen), or
            ``None`` when the items are ID embeddings alone (``model.items.text: false``).
        trunk_factory: Builds the trunk over item ids from an input embedder (the split model
            or the whole model, run causally).
        num_negatives: If set, each position's softmax runs over its target and this many
            uniformly sampled items instead of the whole catalog.
    """

    def __init__(
        self,
        adapters: ClientAdapters,
        text_table: Tensor | None,
        trunk_factory: Callable[[Callable[[Tensor], Tensor]], ItemTrunk],
        num_negatives: int | None = None,
    ) -> None:
        super().__init__()
        modules = adapters.client_modules
        if not modules or not all(isinstance(m, ItemComponents) for m in modules):
            raise ValueError("the sequential recommender needs ItemComponents as client modules")
        self.client_adapters = adapters  # not a module: the peft model registers itself
        self.items = nn.ModuleList(modules)  # registered here, so Lightning checkpoints them
        self.model = adapters.model
        if text_table is not None:
            self.register_buffer("text_table", text_table, persistent=False)
        else:
            self.text_table: Tensor | None = None
        self.num_negatives = num_negatives
        #: Bool ``(I,)``: items held out of training (``data.new_items``), never a training
        #: negative (:func:`~fellrec.models.item_components.mask_unavailable`); None: none.
        self.unavailable: torch.Tensor | None = None
        # Not a submodule: the trunk runs the model's own layers (registered once, above).
        object.__setattr__(self, "trunk", trunk_factory(self.input_vectors))

    @property
    def num_items(self) -> int:
        """Catalog size."""
        return int(self.active_items.num_items)

    @property
    def device(self) -> torch.device:
        """Device of the model weights."""
        return next(self.model.parameters()).device

    @property
    def active_items(self) -> ItemComponents:
        """The per-item components of the active slot."""
        module = self.client_adapters.active_module()
        assert isinstance(module, ItemComponents)
        return module

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """Hybrid vectors of ``items`` (any shape; default every item) ``(..., H)``."""
        text = None
        if self.text_table is not None:
            text = self.text_table if items is None else self.text_table[items]
        return self.active_items.item_vectors(text, items)

    def input_vectors(self, item_ids: Tensor) -> Tensor:
        """Input tokens of a padded history ``(B, T, H)`` (padding rows are masked anyway)."""
        vectors = self.item_vectors(item_ids.clamp(min=0))
        weight = next(self.model.parameters())
        return vectors.to(weight.dtype) if weight.is_floating_point() else vectors

    def states(self, histories: Tensor) -> Tensor:
        """User states after every history position ``(B, H, D)``."""
        histories = histories.to(self.device)
        mask = (histories >= 0).long()
        trunk: ItemTrunk = self.__dict__["trunk"]
        return trunk(histories, mask)

    def losses(
        self, histories: Tensor, targets: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-example mean cross-entropy over its positions ``(B,)``.

        Args:
            histories: Item indices ``(B, H)``, oldest first, left-padded with ``-1``.
            targets: The item after each history ``(B,)``.
            generator: Random generator of the sampled negatives.

        Returns:
            Each example's loss, the mean over its real positions (each predicting the next
            item); no batch reduction.
        """
        histories, targets = histories.to(self.device), targets.to(self.device)
        labels = next_item_targets(histories, targets)  # (B, H)
        rows, cols = (labels >= 0).nonzero(as_tuple=True)
        users = self.states(histories)[rows, cols]  # (N, D)
        wanted = labels[rows, cols]  # (N,)
        items = self.active_items
        if self.num_negatives is None:
            logits = mask_unavailable(items.logits(users, self.item_vectors()), self.unavailable)
            losses = F.cross_entropy(logits, wanted, reduction="none")
        else:
            negatives = torch.randint(
                self.num_items, (len(wanted), self.num_negatives), generator=generator
            ).to(self.device)  # (N, K)
            candidates = torch.cat([wanted.unsqueeze(1), negatives], dim=1)  # (N, 1 + K)
            scores = items.logits(users, self.item_vectors(candidates), candidates)
            # A sampled negative equal to the target must not count as a competitor.
            scores[:, 1:] = scores[:, 1:].masked_fill(negatives == wanted[:, None], float("-inf"))
            scores[:, 1:] = mask_unavailable(scores[:, 1:], self.unavailable, negatives)
            zeros = torch.zeros(len(wanted), dtype=torch.long, device=self.device)
            losses = F.cross_entropy(scores, zeros, reduction="none")
        sums = torch.zeros(len(histories), device=self.device).index_add(0, rows, losses)
        counts = torch.bincount(rows, minlength=len(histories)).clamp_min(1)
        return sums / counts

    def scores(self, histories: Tensor) -> Tensor:
        """Scores ``(B, I)`` of every item after each history (its last position)."""
        users = self.states(histories)[:, -1]  # (B, D): histories are left-padded
        return self.active_items.catalog_logits(users, self.text_table, self.unavailable)
