"""Putting a host's model together: base model, clients' adapters, trunk, item tables, backend.

:class:`RecommenderSettings` is the part of the model settings that decides what is built (and
checks itself); the :class:`~fellrec.training.federated_module.FederatedModule` gets its clients'
adapters over the frozen base from :func:`build_adapters`, then the recommender and the backend
it trains through from :func:`assemble_recommender`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_causal_lm, load_encoder
from fellrec.models.backends import (
    EncoderBackend,
    GenerativeBackend,
    RecommenderBackend,
    SequentialBackend,
)
from fellrec.models.embedding_cache import cache_path, load_or_compute, model_fingerprint
from fellrec.models.encoder import ITEM_ENCODINGS, POOLINGS, SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.hidden_defence import ClientNoise, HiddenDefence
from fellrec.models.item_components import (
    ItemComponents,
    ItemSettings,
    centered_text_table,
    item_component_parameters,
)
from fellrec.models.process_transport import BlockServerSettings, ProcessTransport
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.split import make_trunk
from fellrec.models.text import HistoryRenderer
from fellrec.models.transport import LocalTransport, Transport, check_transport_name

Recommender = SequentialRecommender | SequenceEncoderRecommender | GenerativeRecommender
RECOMMENDERS = ("sequential", "encoder", "generative")


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
        hidden_defence: Clipping and noise on the hidden states that cross the split.
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
    hidden_defence: HiddenDefence = field(default_factory=HiddenDefence)

    @property
    def uses_item_components(self) -> bool:
        """Whether each client has per-item components besides its adapter."""
        return self.kind == "sequential" or (self.kind == "encoder" and self.item_components)

    def tokens_per_example(self, history_length: int) -> int:
        """Sequence length ``T`` of one training example at most (for cost estimates).

        Sequential: one token per history item; encoder: ``model.max_history_tokens``;
        generative: ``model.prompt.max_prompt_tokens``.
        """
        if self.kind == "sequential":
            return history_length
        if self.kind == "generative":
            return int(self.prompt.max_prompt_tokens)
        return int(self.max_history_tokens)

    def client_module_parameters(self, num_items: int, hidden: int) -> int:
        """Trainable parameters of one client outside its adapter (per-item components)."""
        if not self.uses_item_components:
            return 0
        return item_component_parameters(num_items, hidden, self.items)

    def validate(self) -> None:
        """Refuse settings no recommender can be built from, naming the ``model.*`` key.

        Raises:
            ValueError: For an unknown recommender, pooling or item encoding, a negative block
                count or negatives count, ``item_encoding: step`` without sampled negatives, or
                invalid ``model.items`` / ``model.prompt`` settings.
        """
        if self.kind not in RECOMMENDERS:
            raise ValueError(f"model.recommender must be one of {RECOMMENDERS}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ValueError(f"model.num_negatives must be >= 1, got {self.num_negatives}")
        for name, value in (("k_front", self.k_front), ("k_back", self.k_back)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        if self.item_encoding not in ITEM_ENCODINGS:
            raise ValueError(
                f"model.item_encoding must be one of {ITEM_ENCODINGS}, got {self.item_encoding!r}"
            )
        if self.item_encoding == "step" and self.num_negatives is None:
            raise ValueError(
                "model.item_encoding=step encodes the targets and model.num_negatives sampled "
                "items in every step; set model.num_negatives (e.g. 256)"
            )
        self.items.validate()
        self.prompt.validate()
        self.hidden_defence.validate()
        if self.hidden_defence.enabled and not self.split:
            raise ValueError(
                "model.hidden_defence defends the hidden states that cross the split; set "
                "model.split_execution: true (unsplit, nothing crosses)"
            )


def make_transport(name: str, block_server: BlockServerSettings | None = None) -> Transport:
    """The wire between the clients' and the server's blocks, by ``model.transport`` name.

    Args:
        name: ``local`` (in process) or ``process`` (a block server process).
        block_server: Where the ``process`` transport's server runs.

    Raises:
        ValueError: If the name is unknown; the message lists the known ones.
    """
    check_transport_name(name)
    if name == "process":
        return ProcessTransport(block_server)
    return LocalTransport()


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


def build_adapters(
    settings: RecommenderSettings,
    backbone: str,
    lora: LoRASettings,
    clients: list[int],
    num_items: int,
    seed: int,
    load_in_8bit: bool = False,
    base_dropout: float | None = None,
) -> tuple[ClientAdapters, Any]:
    """Load the frozen base model once and attach each held client's adapter and item components.

    Same seed, same initial parameters, in every process and whatever the number of clients held:
    the item components and the adapters are each drawn right after seeding (the first slot's
    draws are copied to the others), so a one-client host starts where the simulation's client
    does. Torch's global random state is left as it was.

    Args:
        settings: What the recommender needs (item components or not; causal LM or encoder).
        backbone: ``model.backbone`` (alias, directory or hub name).
        lora: The adapters' settings.
        clients: The client ids held, one slot each, in slot order.
        num_items: Catalog size (rows of the per-item components).
        seed: ``model.seed``.
        load_in_8bit: Load a causal LM's frozen base in 8 bits.
        base_dropout: ``model.base_dropout`` (None: the base model's own rates).

    Returns:
        The adapters (over the base model) and the base model's tokenizer.
    """
    if settings.kind == "generative":
        model, tokenizer = load_causal_lm(backbone, load_in_8bit, base_dropout)
    else:
        model, tokenizer = load_encoder(backbone, base_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = item_components(
            settings, num_items, int(model.config.hidden_size), len(clients)
        )
        torch.manual_seed(seed)
        adapters = ClientAdapters(model, lora, len(clients), clients, client_modules=components)
    return adapters, tokenizer


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
    defence: ClientNoise | None = None,
) -> tuple[Recommender, RecommenderBackend]:
    """Build the recommender over ``adapters`` and the backend the host trains it through.

    Args:
        settings: What to build.
        adapters: The host's clients' adapters (over the frozen base model).
        tokenizer: The base model's tokenizer.
        texts: Every item's text.
        transport: How hidden states cross the split (None: unsplit or in process).
        embedding_cache: Directory of cached catalog embeddings (reused across runs).
        defence: The clients' hidden-state noise (``model.hidden_defence``), when the host keeps
            its streams (rounds, checkpoints); None: a new one when the settings enable it.
    """
    if defence is None and settings.hidden_defence.enabled:
        defence = ClientNoise(settings.hidden_defence, adapters.active_client)

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
            defence=defence,
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
