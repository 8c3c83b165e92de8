"""Putting a host's model together: base model, clients' adapters, trunk, item tables, backend.

:class:`~fellrec.training.host.recommender_families.RecommenderSettings` decide what is built and
the settings' family (:mod:`fellrec.training.host.recommender_families`) builds it; the
:class:`~fellrec.training.host.federated_module.FederatedModule` gets its clients' adapters over the
frozen base from :func:`build_adapters`, then the recommender and the backend it trains through from
:func:`assemble_recommender`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backends import RecommenderBackend
from fellrec.models.hidden_defence import ClientNoise
from fellrec.models.item_components import ItemComponents
from fellrec.models.split import make_trunk
from fellrec.models.transport import Transport
from fellrec.training.host.recommender_families import Recommender, RecommenderSettings


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
    model, tokenizer = settings.family.load_base(backbone, load_in_8bit, base_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = item_components(
            settings, num_items, int(model.config.hidden_size), len(clients)
        )
        torch.manual_seed(seed)
        adapters = ClientAdapters(model, lora, len(clients), clients, client_modules=components)
    return adapters, tokenizer


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

    return settings.family.assemble(settings, adapters, tokenizer, texts, trunk, embedding_cache)
