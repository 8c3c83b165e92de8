"""Putting a recommender together over a host's adapters: trunk, item tables, backend.

:class:`RecommenderSettings` is the part of the model settings that decides what is built; the
:class:`~fellrec.training.federated_module.FederatedModule` passes it in with the adapters, the
tokenizer and the catalog texts, and gets the recommender and the backend it trains through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters
from fellrec.models.backends import (
    EncoderBackend,
    GenerativeBackend,
    RecommenderBackend,
    SequentialBackend,
)
from fellrec.models.embedding_cache import cache_path, load_or_compute, model_fingerprint
from fellrec.models.encoder import SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.item_components import ItemComponents, ItemSettings, centered_text_table
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.split import make_trunk
from fellrec.models.text import HistoryRenderer
from fellrec.models.transport import Transport

Recommender = SequentialRecommender | SequenceEncoderRecommender | GenerativeRecommender


@dataclass(frozen=True)
class RecommenderSettings:
    """What decides the recommender a host builds (the ``model.*`` settings of that name).

    Attributes:
        kind: ``sequential``, ``encoder`` or ``generative``.
        items: Per-item component settings.
        item_components: The encoder has per-item components too.
        item_encoding: ``round`` or ``step`` (encoder).
        pooling: ``mean`` or ``cls``.
        temperature: Cosine-score temperature.
        max_item_tokens: Tokens kept per item text.
        max_history_tokens: Token budget of a rendered history.
        num_negatives: Sampled negatives instead of the full-catalog softmax.
        item_batch_size: Items per forward pass when encoding the catalog.
        prompt: The generative recommender's prompt settings.
        split: Split execution.
        k_front: Client blocks after the embeddings.
        k_back: Client blocks before the head.
    """

    kind: str
    items: ItemSettings
    item_components: bool
    item_encoding: str
    pooling: str
    temperature: float
    max_item_tokens: int
    max_history_tokens: int
    num_negatives: int | None
    item_batch_size: int
    prompt: PromptSettings
    split: bool
    k_front: int
    k_back: int

    @property
    def uses_item_components(self) -> bool:
        """Whether each client has per-item components besides its adapter."""
        return self.kind == "sequential" or (self.kind == "encoder" and self.item_components)


def item_components(
    settings: RecommenderSettings, num_items: int, hidden: int, count: int
) -> list[ItemComponents] | None:
    """One module of per-item components per slot, or ``None`` when they are off."""
    if not settings.uses_item_components:
        return None
    return [
        ItemComponents(num_items, hidden, settings.items, settings.temperature)
        for _ in range(count)
    ]


def text_table(
    settings: RecommenderSettings, adapters: ClientAdapters, renderer: HistoryRenderer, cache: Path
) -> torch.Tensor:
    """Item-text vectors of the base model without adapters, centered ``(I, H)``, cached.

    Computed with the model's own (unsplit) forward, like grounding embeddings: the catalog and
    the base model are public.
    """
    peft_model = adapters.model
    reader = SequenceEncoderRecommender(peft_model, renderer, settings.pooling)
    key = [*model_fingerprint(peft_model.get_base_model()), settings.pooling, renderer.item_tokens]

    def encode() -> torch.Tensor:
        with peft_model.disable_adapter():
            return reader.encode_items(settings.item_batch_size)

    table = load_or_compute(cache_path(cache, "item-text", key), encode, reader.device)
    return centered_text_table(table)


def assemble_recommender(
    settings: RecommenderSettings,
    adapters: ClientAdapters,
    tokenizer: Any,
    texts: list[str],
    transport: Transport | None,
    embedding_cache: Path,
) -> tuple[Recommender, RecommenderBackend]:
    """Build the recommender over ``adapters`` and the backend the host trains it through.

    Args:
        settings: What to build.
        adapters: The host's clients' adapters (over the frozen base model).
        tokenizer: The base model's tokenizer.
        texts: Every item's text.
        transport: How hidden states cross the split (None: unsplit or in process).
        embedding_cache: Directory of cached catalog embeddings (reused across runs).
    """

    def trunk(
        embed: Callable[[torch.Tensor], torch.Tensor] | None = None, causal: bool = False
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return make_trunk(
            adapters.model,
            settings.split,
            settings.k_front,
            settings.k_back,
            transport,
            embed=embed,
            causal=causal,
        )

    if settings.kind == "generative":
        generative = GenerativeRecommender(
            adapters.model,
            tokenizer,
            texts,
            settings.prompt,
            trunk=trunk(),
            item_batch_size=settings.item_batch_size,
            # Title embeddings depend on the base model and titles only: reuse across runs.
            embedding_cache=embedding_cache,
        )
        return generative, GenerativeBackend(generative, adapters)
    renderer = HistoryRenderer(
        tokenizer, texts, settings.max_item_tokens, settings.max_history_tokens
    )
    if settings.kind == "sequential":
        table = (
            text_table(settings, adapters, renderer, embedding_cache)
            if settings.items.text
            else None
        )
        sequential = SequentialRecommender(
            adapters, table, lambda embed: trunk(embed, causal=True), settings.num_negatives
        )
        return sequential, SequentialBackend(sequential, adapters)

    def active_items() -> ItemComponents:
        module = adapters.active_module()
        assert isinstance(module, ItemComponents)
        return module

    encoder = SequenceEncoderRecommender(
        adapters.model,
        renderer,
        settings.pooling,
        settings.temperature,
        trunk=trunk(),
        components=active_items if settings.uses_item_components else None,
    )
    if adapters.client_modules is not None:
        # Registered under the recommender, so Lightning checkpoints them.
        encoder.items = nn.ModuleList(adapters.client_modules)
    backend = EncoderBackend(
        encoder,
        adapters,
        settings.item_batch_size,
        settings.num_negatives,
        settings.item_encoding,
    )
    return encoder, backend
