"""The privacy probe of split execution: what an honest-but-curious server reads from h_front.

Public text is the catalog (item texts in seeded random orders, rendered exactly like a recommender
input); victims are real training examples rendered the way the configured recommender renders
them. :func:`privacy_section` runs the linear-inversion attack of :mod:`fellrec.models.inversion`
on them and returns the ``"privacy"`` section of ``results.json``; ``fellrec attack`` and the end
of every split run (``model.privacy_probe``) use it.

Unlike the record helpers (which get the values they need), these functions take the whole
:class:`~fellrec.training.host.federated_module.FederatedModule`, on purpose: they play the server
against a real client, so they run that client's own model (its adapters, recommender, hidden-state
defence and rendering settings) exactly as training does, swapping its parameters in and out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fellrec.models.front_copy import ATTACK as FRONT_COPY
from fellrec.models.front_copy import front_copy_recovery, front_states
from fellrec.models.inversion import Batch, ItemInputs, token_recovery
from fellrec.models.text import HistoryRenderer, format_item_text
from fellrec.training.batches.datamodule import FederatedDataModule

if TYPE_CHECKING:
    from fellrec.training.host.federated_module import FederatedModule

ATTACK = "linear-inversion"


def public_histories(num_items: int, count: int, length: int, seed: int) -> np.ndarray:
    """``count`` histories of ``length`` items: the catalog in seeded random orders, chunked.

    The catalog is public; only which items a user had, and in which order, is private.
    """
    rng = np.random.default_rng(seed)
    needed = count * length
    orders = [rng.permutation(num_items) for _ in range(-(-needed // num_items))]
    return np.concatenate(orders)[:needed].reshape(count, length)


def victim_examples(
    datamodule: FederatedDataModule, count: int, seed: int, client: int | None = None
) -> tuple[Any, Any]:
    """``count`` real training examples ``(histories (n, H) padded with -1, targets (n,))``.

    Drawn from ``client``'s examples, or the served client's when the data module serves one
    client (a silo), else from everybody's.
    """
    examples = datamodule.data.examples
    candidates = np.arange(len(examples))
    client = client if client is not None else datamodule.client
    if client is not None:
        candidates = np.flatnonzero(datamodule.data.example_clients() == client)
    if len(candidates) == 0:
        raise ValueError("the privacy attack needs training examples; the data has none")
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
    return examples.histories[rows], examples.targets[rows]


def _pad_right(sequences: list[list[int]], content: list[list[bool]], pad_id: int) -> Batch:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    counted = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, flags) in enumerate(zip(sequences, content, strict=True)):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
        counted[row, : len(seq)] = torch.tensor(flags, dtype=torch.bool)
    return input_ids, attention_mask, counted


def _template_flags(prompt: list[int], empty: list[int]) -> list[bool]:
    """True where ``prompt`` differs from the prompt of an empty history (the titles)."""
    head = 0
    while head < min(len(prompt), len(empty)) and prompt[head] == empty[head]:
        head += 1
    tail = 0
    while tail < min(len(prompt), len(empty)) - head and prompt[-1 - tail] == empty[-1 - tail]:
        tail += 1
    return [head <= i < len(prompt) - tail for i in range(len(prompt))]


def render_batches(
    module: FederatedModule,
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    histories: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
) -> list[Batch]:
    """Token batches of examples, rendered as the configured recommender renders its inputs.

    Sequential: the item ids themselves, one token per item (all content).
    Encoder: the history text (most recent first) of :class:`~fellrec.models.text.HistoryRenderer`.
    Generative: the training sequence, prompt + quoted target title + eos, right-padded. Each
    batch carries a third mask of the content positions: the item texts, not the special tokens
    or the fixed prompt template (which the server knows without any attack).
    """
    batches: list[Batch] = []
    family = module.recommender_family
    if family.item_token_inputs:
        # One token per item: the ids themselves, every real position is content.
        for start in range(0, len(histories), batch_size):
            ids = torch.as_tensor(histories[start : start + batch_size], dtype=torch.long)
            mask = (ids >= 0).long()
            batches.append((ids, mask, mask.bool()))
        return batches
    if not family.causal_lm:
        renderer = HistoryRenderer(
            tokenizer, texts, module.max_item_tokens, module.max_history_tokens
        )
        specials = torch.tensor([renderer.start_id, renderer.sep_id])
        for start in range(0, len(histories), batch_size):
            chunk = torch.as_tensor(histories[start : start + batch_size], dtype=torch.long)
            input_ids, attention_mask = renderer.render_histories(chunk)
            content = attention_mask.bool() & ~torch.isin(input_ids, specials)
            batches.append((input_ids, attention_mask, content))
        return batches
    from fellrec.models.generative import GenerativeRecommender

    generative = GenerativeRecommender(model, tokenizer, list(texts), module.prompt)
    sequences: list[list[int]] = []
    flags_per_row: list[list[bool]] = []
    for row, target in zip(histories.tolist(), targets.tolist(), strict=True):
        response = generative.response_ids(int(target))
        budget = module.prompt.max_prompt_tokens - len(response)
        prompt = generative.prompt_ids([i for i in row if i >= 0], budget)
        flags = _template_flags(prompt, generative.prompt_ids([], budget))
        sequences.append([*prompt, *response])
        flags_per_row.append([*flags, *([True] * (len(response) - 1)), False])  # eos: template
    for start in range(0, len(sequences), batch_size):
        rows = slice(start, start + batch_size)
        batches.append(_pad_right(sequences[rows], flags_per_row[rows], generative.pad_id))
    return batches


def sequential_item_inputs(module: FederatedModule, slot: int) -> ItemInputs:
    """What the attacker and the victims of a sequential recommender embed items with.

    The server can compute the public text table itself (public base model, public catalog) but
    not the clients' ID embeddings: it fits its map on public item sequences embedded with the
    text vectors alone and maps onto them, while the victims' inputs are their client's hybrid
    item vectors (text plus ID embedding).

    Raises:
        ValueError: If the module is not a set-up sequential recommender, or it has no item text
            (``model.items.text: false``): then nothing public describes an item.
    """
    from fellrec.models.sequential import SequentialRecommender

    recommender = module.recommender
    if not isinstance(recommender, SequentialRecommender) or module.adapters is None:
        raise ValueError("the item-token probe needs a set-up sequential recommender")
    text = recommender.text_table
    if text is None:
        raise ValueError(
            "model.items.text is false: no public vector describes an item, so the linear "
            "inversion has nothing to map onto"
        )
    adapters = module.adapters

    def victim_embed(ids: torch.Tensor) -> torch.Tensor:
        adapters.activate(slot)
        return recommender.input_vectors(ids)

    def public_embed(ids: torch.Tensor) -> torch.Tensor:
        return text[ids.clamp(min=0)]

    return ItemInputs(table=text, public_embed=public_embed, victim_embed=victim_embed, causal=True)


def _front_copy(
    module: FederatedModule,
    model: Any,
    public_batches: list[Batch],
    victim_batches: list[Batch],
    k_fronts: Sequence[int],
    shortlist: int,
    ridge: float,
    slot: int | None,
    server_parameters: torch.Tensor | None,
    seed: int,
) -> dict[str, Any]:
    """The front-copy attack (the server runs the client's front with the client's parameters).

    Victims' hidden states are computed with the parameters the client holds; the server's copy
    uses ``server_parameters`` for the victims' slot when given (e.g. a round's start: stale),
    else the same ones (what the client runs at evaluation).
    """
    section: dict[str, Any] = {"attack": FRONT_COPY, "shortlist": shortlist}
    family = module.recommender_family
    if not family.front_is_causal:
        section["error"] = (
            "not run: the encoder's front is bidirectional (a position's state depends on later "
            "tokens), so the server cannot decode it position by position"
        )
        return section
    embed = None
    causal = family.causal_encoder
    if family.item_token_inputs:
        assert slot is not None
        items = sequential_item_inputs(module, slot)
        embed = items.victim_embed
    victim_states = front_states(model, victim_batches, k_fronts, embed, causal)
    defence = module.hidden_defence
    if defence.enabled:
        # What the server receives: each client's states clipped and noised before they cross.
        generator = torch.Generator().manual_seed(seed + 2)
        victim_states = {
            k: [defence(h.cpu(), generator).to(h.device) for h in states]
            for k, states in victim_states.items()
        }
    adapters = module.adapters
    own = None
    if server_parameters is not None and slot is not None and adapters is not None:
        own = adapters.get_vector(slot)
        adapters.set_vector(slot, server_parameters)
        module.invalidate_item_tables()
    try:
        if causal:
            from fellrec.models.sequential import SequentialRecommender

            assert adapters is not None and isinstance(module.recommender, SequentialRecommender)
            adapters.activate(slot)  # type: ignore[arg-type]
            with torch.no_grad():
                table = module.recommender.item_vectors().detach()
        else:
            table = model.get_input_embeddings().weight.detach()
        section["curve"] = front_copy_recovery(
            model,
            public_batches,
            victim_batches,
            victim_states,
            table,
            embed,
            causal,
            shortlist,
            ridge,
            defence,
            seed + 3,
        )
    finally:
        if own is not None and adapters is not None and slot is not None:
            adapters.set_vector(slot, own)
            module.invalidate_item_tables()
    section["parameters"] = "round start" if own is not None else "exact"
    return section


def privacy_section(
    module: FederatedModule,
    datamodule: FederatedDataModule,
    model: Any,
    tokenizer: Any,
    k_fronts: Sequence[int],
    public_texts: int = 200,
    victims: int = 50,
    ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 16,
    shortlist: int = 16,
    server_parameters: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Run the hidden-state attacks and return their part of the ``"privacy"`` section.

    Args:
        module: The run's model settings (recommender kind, text template, lengths, prompt).
        datamodule: The set-up data (catalog texts and real training examples).
        model: The model with the clients' adapters (a peft model, or a plain base model); the
            linear inversion runs without them (the public base model), the front copy with.
        tokenizer: Its tokenizer.
        k_fronts: Split points to attack.
        public_texts: Public sequences the attacker fits its map on.
        victims: Real training examples attacked.
        ridge: Relative ridge penalty of the linear map.
        seed: Seed of the public and victim draws.
        batch_size: Sequences per forward pass.
        shortlist: Candidates per position of the front-copy attack (0: do not run it).
        server_parameters: The victims' client's parameters as the server knows them, when
            they differ from those the client computed its hidden states with (stale).

    Returns:
        ``{"attack", "public_texts", "victims", "curve", "inputs", "backbone", "ridge", "seed",
        "front_copy"}`` where the curve holds one ``{"k_front", "token_recovery", "tokens",
        "content_recovery", "content_tokens"}`` per split point, and ``front_copy`` the
        front-copy attack's ``{"attack", "shortlist", "parameters", "curve"}`` (its curve adds
        ``shortlist_recall``; ``"error"`` instead of a curve where it cannot run), or None, and
        ``hidden_defence``: the ``model.hidden_defence`` the victims' states crossed with
        (:meth:`~fellrec.models.hidden_defence.HiddenDefence.describe`; both attacks see the
        states defended and know the setting).
    """
    titles, categories = datamodule.item_texts()
    texts = [
        format_item_text(module.item_text, t, c) for t, c in zip(titles, categories, strict=True)
    ]
    length = datamodule.settings.history_length
    public = public_histories(len(texts), public_texts, length + 1, seed)
    items = None
    victim_client = None
    slot = None
    if module.recommender_family.item_token_inputs:
        # Victims of one client, embedded with that client's own item vectors.
        victim_client = datamodule.client if datamodule.client is not None else 0
        slot = module.slot(victim_client)
        items = sequential_item_inputs(module, slot)
    histories, targets = victim_examples(datamodule, victims, seed, victim_client)
    render = (module, model, tokenizer, texts)
    public_batches = render_batches(*render, public[:, :-1], public[:, -1], batch_size)
    victim_batches = render_batches(*render, histories, targets, batch_size)
    # The linear inversion knows the public base model only, not the clients' adapters.
    without_adapters = getattr(model, "disable_adapter", contextlib.nullcontext)
    with without_adapters():
        curve = token_recovery(
            model,
            public_batches,
            victim_batches,
            k_fronts,
            ridge,
            items,
            module.hidden_defence,
            seed,
        )
    front_copy = None
    if shortlist > 0:
        front_copy = _front_copy(
            module,
            model,
            public_batches,
            victim_batches,
            k_fronts,
            shortlist,
            ridge,
            slot,
            server_parameters,
            seed,
        )
    return {
        "attack": ATTACK,
        "public_texts": len(public),
        "victims": len(histories),
        "curve": curve,
        "inputs": "items" if items is not None else "tokens",
        "backbone": module.backbone_name,
        "ridge": ridge,
        "seed": seed,
        "front_copy": front_copy,
        "hidden_defence": module.hidden_defence.describe(),
    }
