"""Recommender families: one object per ``model.recommender`` that answers what the code asks of it.

:class:`RecommenderSettings` are the ``model.*`` settings that decide what is built (they check
themselves); their :attr:`~RecommenderSettings.family` builds it
(:func:`~fellrec.training.host.recommender_assembly.assemble_recommender` calls it).

A family says which base model it loads, how its trunk runs, what its inputs are, whether its
clients have per-item components, how long a training example is and how the recommender and its
backend are put together. Every place that depends on the kind of recommender asks the family
(:func:`recommender_family`) instead of comparing names, so a new family is one subclass and one
:func:`register_family` call (CONTRIBUTING.md, "Add a recommender family").

The built-in families:

* ``sequential``: item tokens through the encoder run causally, a target at every position
  (:class:`~fellrec.models.sequential.SequentialRecommender`);
* ``encoder``: RecFormer-style history text through a bidirectional encoder
  (:class:`~fellrec.models.encoder.SequenceEncoderRecommender`);
* ``generative``: BIGRec-style prompt and title generation with a causal LM
  (:class:`~fellrec.models.generative.GenerativeRecommender`).

Longer than most modules: it is one extension point (``CONTRIBUTING.md``, "Add a recommender
family"): the family interface, the three built-in families and their registry, so that what
one ``model.recommender`` value means is written in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters
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
from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.item_components import (
    ItemComponents,
    ItemSettings,
    centered_text_table,
    item_component_parameters,
)
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.text import HistoryRenderer

Recommender = SequentialRecommender | SequenceEncoderRecommender | GenerativeRecommender

#: ``trunk(embed=None, causal=False)``: the (possibly split) trunk over the host's adapters;
#: ``embed`` replaces the token embedding, ``causal`` runs an encoder causally.
TrunkFactory = Callable[..., Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class RecommenderSettings:
    """What decides the recommender a host builds (the ``model.*`` settings of that name).

    Attributes:
        kind: ``model.recommender``: the name of a registered family (``sequential``,
            ``encoder``, ``generative`` or one registered by other code).
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
    def family(self) -> RecommenderFamily:
        """The registered family of ``kind`` (:mod:`fellrec.training.host.recommender_families`).

        Raises:
            ValueError: For an unknown ``kind``, naming ``model.recommender`` and listing the
                registered families.
        """
        return recommender_family(self.kind)

    @property
    def uses_item_components(self) -> bool:
        """Whether each client has per-item components besides its adapter."""
        return self.family.uses_item_components(self)

    @property
    def trainable_inputs(self) -> bool:
        """Whether the input embeddings are trained (item-token inputs with ``model.items.ids``)."""
        return self.family.item_token_inputs and self.items.ids

    def tokens_per_example(self, history_length: int) -> int:
        """Sequence length ``T`` of one training example at most (for cost estimates).

        Sequential: one token per history item; encoder: ``model.max_history_tokens``;
        generative: ``model.prompt.max_prompt_tokens``.
        """
        return self.family.tokens_per_example(self, history_length)

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
                invalid ``model.items`` / ``model.prompt`` settings (``model.items.cold_start``
                without per-item components, ``model.prompt.popularity_gamma`` without a
                generative recommender among them).
        """
        recommender_family(self.kind)  # an unknown name fails here
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
        if self.items.cold_start != "none" and not self.uses_item_components:
            raise ValueError(
                f"model.items.cold_start={self.items.cold_start!r} predicts new items' ID rows "
                f"and biases, which model.recommender={self.kind!r} has only with "
                "model.item_components: true"
            )
        self.prompt.validate()
        if self.prompt.popularity_gamma > 0 and not self.family.grounds_titles:
            raise ValueError(
                f"model.prompt.popularity_gamma={self.prompt.popularity_gamma:g} re-scores the "
                f"titles a generative recommender grounds; model.recommender={self.kind!r} "
                "ranks by its learned scores (item biases hold popularity): set it to 0"
            )
        self.hidden_defence.validate()
        if self.hidden_defence.enabled and not self.split:
            raise ValueError(
                "model.hidden_defence defends the hidden states that cross the split; set "
                "model.split_execution: true (unsplit, nothing crosses)"
            )


class RecommenderFamily:
    """What one ``model.recommender`` value means; subclass it and register an instance.

    Attributes:
        name: The ``model.recommender`` value.
        causal_lm: The base model is a causal LM with its head (loaded by
            :func:`~fellrec.models.backbone.load_causal_lm`), prompted with ``model.prompt``;
            otherwise an encoder (:func:`~fellrec.models.backbone.load_encoder`).
        causal_encoder: The trunk runs an encoder causally (a position sees earlier ones only).
        item_token_inputs: One input token per history item, embedded with the client's
            per-item vectors (so ``model.items.ids`` makes the inputs trainable, and the
            inversion attacks embed items with a client's components); otherwise the inputs are
            the tokenizer's tokens.
        grounds_titles: Recommends by grounding generated titles on the catalog, which
            ``model.prompt.popularity_gamma`` re-scores with the client's item counts.
    """

    name: ClassVar[str]
    causal_lm: ClassVar[bool] = False
    causal_encoder: ClassVar[bool] = False
    item_token_inputs: ClassVar[bool] = False
    grounds_titles: ClassVar[bool] = False

    @property
    def front_is_causal(self) -> bool:
        """A position's hidden state depends on earlier tokens only (front-copy decodes it)."""
        return self.causal_lm or self.causal_encoder

    def uses_item_components(self, settings: RecommenderSettings) -> bool:
        """Whether each client has per-item components besides its adapter."""
        return False

    def tokens_per_example(self, settings: RecommenderSettings, history_length: int) -> int:
        """Sequence length ``T`` of one training example at most (for cost estimates).

        By default ``model.max_history_tokens`` (a rendered history text).
        """
        return int(settings.max_history_tokens)

    def load_base(
        self, backbone: str, load_in_8bit: bool = False, dropout: float | None = None
    ) -> tuple[Any, Any]:
        """The frozen base model and its tokenizer.

        Args:
            backbone: ``model.backbone``.
            load_in_8bit: Quantize a causal LM's weights (``model.load_in_8bit``).
            dropout: ``model.base_dropout`` (None: the base model's own rates).
        """
        if self.causal_lm:
            return load_causal_lm(backbone, load_in_8bit, dropout)
        return load_encoder(backbone, dropout)

    def assemble(
        self,
        settings: RecommenderSettings,
        adapters: ClientAdapters,
        tokenizer: Any,
        texts: list[str],
        trunk: TrunkFactory,
        embedding_cache: Path,
    ) -> tuple[Recommender, RecommenderBackend]:
        """Build the recommender over ``adapters`` and the backend the host trains it through.

        Args:
            settings: What to build.
            adapters: The host's clients' adapters (over the frozen base model).
            tokenizer: The base model's tokenizer.
            texts: Every item's text.
            trunk: Makes the (possibly split) trunk over the adapters.
            embedding_cache: Directory of cached catalog embeddings (reused across runs).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


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


def _renderer(settings: RecommenderSettings, tokenizer: Any, texts: list[str]) -> HistoryRenderer:
    return HistoryRenderer(tokenizer, texts, settings.max_item_tokens, settings.max_history_tokens)


class SequentialFamily(RecommenderFamily):
    """Item tokens through the encoder run causally; per-item components always."""

    name = "sequential"
    causal_encoder = True
    item_token_inputs = True

    def uses_item_components(self, settings: RecommenderSettings) -> bool:
        """Always: the item vectors are the inputs and the output table."""
        return True

    def tokens_per_example(self, settings: RecommenderSettings, history_length: int) -> int:
        """``data.history_length``: one token per history item."""
        return history_length

    def assemble(
        self,
        settings: RecommenderSettings,
        adapters: ClientAdapters,
        tokenizer: Any,
        texts: list[str],
        trunk: TrunkFactory,
        embedding_cache: Path,
    ) -> tuple[Recommender, RecommenderBackend]:
        """A :class:`SequentialRecommender` (with the item-text table when ``items.text``)."""
        renderer = _renderer(settings, tokenizer, texts)
        table = (
            text_table(settings, adapters, renderer, embedding_cache)
            if settings.items.text
            else None
        )
        sequential = SequentialRecommender(
            adapters,
            table,
            lambda embed: trunk(embed, causal=self.causal_encoder),
            settings.num_negatives,
        )
        return sequential, SequentialBackend(sequential, adapters)


class EncoderFamily(RecommenderFamily):
    """RecFormer-style history text through a bidirectional encoder."""

    name = "encoder"

    def uses_item_components(self, settings: RecommenderSettings) -> bool:
        """When ``model.item_components`` is set."""
        return settings.item_components

    def assemble(
        self,
        settings: RecommenderSettings,
        adapters: ClientAdapters,
        tokenizer: Any,
        texts: list[str],
        trunk: TrunkFactory,
        embedding_cache: Path,
    ) -> tuple[Recommender, RecommenderBackend]:
        """A :class:`SequenceEncoderRecommender` over the history text and its backend."""

        def active_items() -> ItemComponents:
            module = adapters.active_module()
            assert isinstance(module, ItemComponents)
            return module

        encoder = SequenceEncoderRecommender(
            adapters.model,
            _renderer(settings, tokenizer, texts),
            settings.pooling,
            settings.temperature,
            trunk=trunk(),
            components=active_items if self.uses_item_components(settings) else None,
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


class GenerativeFamily(RecommenderFamily):
    """BIGRec-style: a causal LM generates the next item's title from a prompt."""

    name = "generative"
    causal_lm = True
    grounds_titles = True

    def tokens_per_example(self, settings: RecommenderSettings, history_length: int) -> int:
        """``model.prompt.max_prompt_tokens``."""
        return int(settings.prompt.max_prompt_tokens)

    def assemble(
        self,
        settings: RecommenderSettings,
        adapters: ClientAdapters,
        tokenizer: Any,
        texts: list[str],
        trunk: TrunkFactory,
        embedding_cache: Path,
    ) -> tuple[Recommender, RecommenderBackend]:
        """A :class:`GenerativeRecommender` (title embeddings cached) and its backend."""
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


#: The registered families by ``model.recommender`` name (built-ins first, in this order).
RECOMMENDER_FAMILIES: dict[str, RecommenderFamily] = {}


def register_family(family: RecommenderFamily) -> None:
    """Make ``family`` a ``model.recommender`` choice.

    Raises:
        ValueError: If a family of that name is registered already.
    """
    if family.name in RECOMMENDER_FAMILIES:
        raise ValueError(f"a recommender family named {family.name!r} is registered already")
    RECOMMENDER_FAMILIES[family.name] = family


def unregister_family(name: str) -> None:
    """Remove the family registered as ``name`` (e.g. a test's toy family).

    Raises:
        KeyError: If none is registered under that name.
    """
    del RECOMMENDER_FAMILIES[name]


def recommender_family(name: str) -> RecommenderFamily:
    """The family registered as ``name``.

    Raises:
        ValueError: For an unknown name; the message names ``model.recommender`` and lists the
            registered families.
    """
    family = RECOMMENDER_FAMILIES.get(name)
    if family is None:
        raise ValueError(
            f"model.recommender must be one of {tuple(RECOMMENDER_FAMILIES)}, got {name!r}"
        )
    return family


for _family in (SequentialFamily(), EncoderFamily(), GenerativeFamily()):
    register_family(_family)
