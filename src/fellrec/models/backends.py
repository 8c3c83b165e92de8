"""The two recommender backends behind one small interface, per adapter slot.

:class:`~fellrec.training.host.federated_module.FederatedModule` routes every batch to a slot (a
client's adapter) and asks the backend for per-example training losses or for item scores; it does
not need to know whether items are scored by an encoder's item table or found by generation and
grounding.

- :class:`SequentialBackend`: the LLM over item tokens. Item vectors are recomputed from the
  client's components at every call (cheap: an ``(I, H)`` add), so nothing is cached.
- :class:`EncoderBackend`: the sequence-encoder recommender. The catalog is encoded with a slot's
  current adapter once per round and cached until the adapters change (aggregation, selection,
  loading); while every slot holds the same adapter, one encoding serves them all.
- :class:`GenerativeBackend`: the BIGRec-style causal LM. Training is the causal-LM loss of the
  rendered prompt; scores come from beam search and grounding against item-title embeddings that
  the base model (without adapters) computes once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from fellrec.models.adapters import ClientAdapters
from fellrec.models.encoder import SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.popularity_grounding import standardized_log_popularity
from fellrec.models.sequential import SequentialRecommender


class RecommenderBackend(Protocol):
    """What the Lightning layer needs from a recommender, for the adapter slot it activates."""

    def prepare(self, slot: int) -> None:
        """Compute what ``slot``'s training steps need beforehand (outside their traffic)."""
        ...

    def losses(
        self,
        slot: int,
        histories: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Per-example training losses ``(B,)`` of ``slot``'s model (not reduced)."""
        ...

    def scores(
        self, slot: int, histories: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(B, I)`` of every item for each history (higher is better).

        ``exclude`` (bool ``(B, I)``, optional) marks the items a user has consumed: the caller
        masks them from the ranking whatever they score, and a backend whose scores of the other
        items depend on the whole row (the generative one's standardized popularity term) leaves
        them out.
        """
        ...

    def invalidate(self, identical_adapters: bool = False) -> None:
        """Forget what was computed with the previous adapters."""
        ...

    def use_item_counts(self, slot: int, counts: torch.Tensor) -> None:
        """Training interactions per item ``(I,)`` of ``slot``'s client, for scoring with them.

        Called once per slot when the model is built, with what that client's own training data
        holds (every user's when the strategy pools the clients); backends that do not rank with
        counts ignore it.
        """
        ...

    def lockstep(self, max_over_processes: Callable[[int], int]) -> None:
        """From now on run the model equally often on every process (its blocks get sharded).

        Called before the blocks are sharded. ``max_over_processes(n)`` is the largest ``n`` any
        process passes (a collective); a backend whose number of model calls depends on its
        rows uses it to pad with extra calls.
        """
        ...


class SequentialBackend:
    """Next-item prediction at every position of an item-token history.

    Args:
        recommender: The sequential recommender (its adapters' client modules score items).
        adapters: The per-slot adapters.
    """

    def __init__(self, recommender: SequentialRecommender, adapters: ClientAdapters) -> None:
        self.recommender = recommender
        self.adapters = adapters

    def prepare(self, slot: int) -> None:
        """Nothing to prepare: item vectors come from the slot's components at each step."""

    def losses(
        self,
        slot: int,
        histories: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Per-example mean cross-entropy over the history positions ``(B,)``."""
        self.adapters.activate(slot)
        return self.recommender.losses(histories, targets, generator)

    def scores(
        self, slot: int, histories: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cosine / temperature + bias of every item after each history ``(B, I)``.

        ``exclude`` changes no other item's score: it is left to the caller's mask.
        """
        self.adapters.activate(slot)
        return self.recommender.scores(histories)

    def invalidate(self, identical_adapters: bool = False) -> None:
        """Nothing to forget."""

    def use_item_counts(self, slot: int, counts: torch.Tensor) -> None:
        """Nothing to keep: this backend ranks by what training learned alone."""

    def lockstep(self, max_over_processes: Callable[[int], int]) -> None:
        """Nothing to do: one trunk call per batch, whatever its rows."""


class EncoderBackend:
    """Sequence-encoder scoring with a per-slot item table cached within a round.

    Args:
        recommender: The encoder recommender (its encoder is the peft model of ``adapters``).
        adapters: The per-slot adapters.
        item_batch_size: Items per forward pass when encoding the catalog.
        num_negatives: Sampled negatives per example instead of the full-catalog softmax (with
            ``item_encoding="step"``: per batch, shared by its examples).
        item_encoding: ``round``: the catalog is encoded once per round and fixed within it
            (no item-side gradient); ``step``: each training step encodes the batch's targets
            and sampled negatives with the adapter, so item-side gradients train it too.
    """

    def __init__(
        self,
        recommender: SequenceEncoderRecommender,
        adapters: ClientAdapters,
        item_batch_size: int = 64,
        num_negatives: int | None = None,
        item_encoding: str = "round",
    ) -> None:
        if item_encoding == "step" and num_negatives is None:
            raise ValueError(
                "model.item_encoding=step encodes the targets and model.num_negatives sampled "
                "items in every step; set model.num_negatives (e.g. 256)"
            )
        self.recommender = recommender
        self.adapters = adapters
        self.item_batch_size = item_batch_size
        self.num_negatives = num_negatives
        self.item_encoding = item_encoding
        self.item_tables: dict[int, torch.Tensor] = {}
        self._tables_shared = True  # all slots start from the same adapter

    def prepare(self, slot: int) -> None:
        """Encode the catalog for ``slot`` if its table is not cached (round encoding)."""
        if self.item_encoding == "round":
            self.item_table(slot)

    def item_table(self, slot: int) -> torch.Tensor:
        """The catalog encoded with ``slot``'s current adapter ``(I, H)``, cached."""
        if slot not in self.item_tables:
            if self._tables_shared and self.item_tables:
                # Every slot holds the same adapter: one encoding serves all of them.
                self.item_tables[slot] = next(iter(self.item_tables.values()))
            else:
                self.adapters.activate(slot)
                self.item_tables[slot] = self.recommender.encode_items(self.item_batch_size)
        return self.item_tables[slot]

    def invalidate(self, identical_adapters: bool = False) -> None:
        """Forget cached item tables.

        Args:
            identical_adapters: All slots now hold the same adapter (a shared-model strategy just
                broadcast it), so the next encoding can serve every slot.
        """
        self.item_tables.clear()
        self._tables_shared = identical_adapters

    def lockstep(self, max_over_processes: Callable[[int], int]) -> None:
        """Nothing to do: the catalog, a batch's histories and its items are one call each."""

    def use_item_counts(self, slot: int, counts: torch.Tensor) -> None:
        """Nothing to keep: this backend ranks by what training learned alone."""

    def losses(
        self,
        slot: int,
        histories: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Cross-entropy of each target over the catalog (or sampled negatives) ``(B,)``."""
        if self.item_encoding == "step":
            return self._step_losses(slot, histories, targets, generator)
        table = self.item_table(slot)
        self.adapters.activate(slot)
        users = self.recommender.encode_histories(histories)
        return self.recommender.loss(users, table, targets, self.num_negatives, generator)

    def _step_losses(
        self,
        slot: int,
        histories: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Targets and shared sampled negatives encoded in the step, with gradients."""
        assert self.num_negatives is not None
        self.adapters.activate(slot)
        users = self.recommender.encode_histories(histories)
        negatives = torch.randint(
            self.recommender.renderer.num_items, (self.num_negatives,), generator=generator
        )
        candidates, inverse = torch.unique(
            torch.cat([targets.cpu(), negatives]), return_inverse=True
        )
        vectors = self.recommender.encode_item_subset(candidates)  # (C, H), with gradients
        positions = inverse[: len(targets)].to(users.device)
        return self.recommender.candidate_loss(
            users, candidates.to(users.device), vectors, positions
        )

    def scores(
        self, slot: int, histories: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Temperature-scaled cosine scores of every item ``(B, I)``.

        ``exclude`` changes no other item's score: it is left to the caller's mask.
        """
        table = self.item_table(slot)
        self.adapters.activate(slot)
        users = self.recommender.encode_histories(histories)
        return self.recommender.catalog_scores(users, table)


class GenerativeBackend:
    """Generation-and-grounding scoring with a causal LM.

    Args:
        recommender: The generative recommender (its model is the peft model of ``adapters``).
        adapters: The per-slot adapters.
    """

    def __init__(self, recommender: GenerativeRecommender, adapters: ClientAdapters) -> None:
        self.recommender = recommender
        self.adapters = adapters
        # Per slot, the standardized log training counts of BIGRec's popularity term.
        self.log_popularity: dict[int, torch.Tensor] = {}

    def prepare(self, slot: int) -> None:
        """Nothing to prepare: the prompt is the whole input."""

    def losses(
        self,
        slot: int,
        histories: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Per-example causal-LM loss of the prompt and response ``(B,)``."""
        self.adapters.activate(slot)
        return self.recommender.losses(histories, targets)

    def scores(
        self, slot: int, histories: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Negative L2 distances of the generated titles to every item title ``(B, I)``.

        With ``model.prompt.popularity_gamma`` > 0, re-scored with the slot's popularity term,
        standardized over the items not in ``exclude`` (``-inf`` there).
        """
        self.adapters.activate(slot)
        return self.recommender.recommend(
            histories, exclude, log_popularity=self.log_popularity.get(slot)
        )

    def use_item_counts(self, slot: int, counts: torch.Tensor) -> None:
        """Keep the slot's standardized log counts when the popularity term is on."""
        if self.recommender.settings.popularity_gamma > 0:
            self.log_popularity[slot] = standardized_log_popularity(counts).float()

    def invalidate(self, identical_adapters: bool = False) -> None:
        """Nothing to forget: item-title embeddings come from the base model, not the adapters."""

    def lockstep(self, max_over_processes: Callable[[int], int]) -> None:
        """Beam search and grounding run the model equally often on every process."""
        self.recommender.lockstep(max_over_processes)
