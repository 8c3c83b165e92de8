"""The privacy probe of split execution: what an honest-but-curious server reads from h_front.

Public text is the catalog (item texts in seeded random orders, rendered exactly like a recommender
input); victims are real training examples rendered the way the configured recommender renders
them. :func:`privacy_section` runs the linear-inversion attack of :mod:`fellrec.models.inversion`
on them and returns the ``"privacy"`` section of ``results.json``; ``fellrec attack`` and the end
of every split run (``model.privacy_probe``) use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fellrec.models.inversion import Batch, token_recovery
from fellrec.models.text import HistoryRenderer, format_item_text
from fellrec.training.datamodule import FederatedDataModule

if TYPE_CHECKING:
    from fellrec.training.federated_module import FederatedModule

ATTACK = "linear-inversion"


def public_histories(num_items: int, count: int, length: int, seed: int) -> np.ndarray:
    """``count`` histories of ``length`` items: the catalog in seeded random orders, chunked.

    The catalog is public; only which items a user had, and in which order, is private.
    """
    rng = np.random.default_rng(seed)
    needed = count * length
    orders = [rng.permutation(num_items) for _ in range(-(-needed // num_items))]
    return np.concatenate(orders)[:needed].reshape(count, length)


def victim_examples(datamodule: FederatedDataModule, count: int, seed: int) -> tuple[Any, Any]:
    """``count`` real training examples ``(histories (n, H) padded with -1, targets (n,))``.

    Drawn from the served client's examples when the data module serves one client (a silo).
    """
    examples = datamodule.data.examples
    candidates = np.arange(len(examples))
    if datamodule.client is not None:
        candidates = np.flatnonzero(datamodule.data.example_clients() == datamodule.client)
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

    Encoder: the history text (most recent first) of :class:`~fellrec.models.text.HistoryRenderer`.
    Generative: the training sequence, prompt + quoted target title + eos, right-padded. Each
    batch carries a third mask of the content positions: the item texts, not the special tokens
    or the fixed prompt template (which the server knows without any attack).
    """
    batches: list[Batch] = []
    if module.recommender_kind == "encoder":
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
) -> dict[str, Any]:
    """Run the attack and return the ``"privacy"`` section of ``results.json``.

    Args:
        module: The run's model settings (recommender kind, text template, lengths, prompt).
        datamodule: The set-up data (catalog texts and real training examples).
        model: The public base model as the server knows it (no client adapters).
        tokenizer: Its tokenizer.
        k_fronts: Split points to attack.
        public_texts: Public sequences the attacker fits its map on.
        victims: Real training examples attacked.
        ridge: Relative ridge penalty of the linear map.
        seed: Seed of the public and victim draws.
        batch_size: Sequences per forward pass.

    Returns:
        ``{"attack", "public_texts", "victims", "curve", "backbone", "ridge", "seed"}`` where the
        curve holds one ``{"k_front", "token_recovery", "tokens", "content_recovery",
        "content_tokens"}`` per split point.
    """
    titles, categories = datamodule.item_texts()
    texts = [
        format_item_text(module.item_text, t, c) for t, c in zip(titles, categories, strict=True)
    ]
    length = datamodule.settings.history_length
    public = public_histories(len(texts), public_texts, length + 1, seed)
    histories, targets = victim_examples(datamodule, victims, seed)
    render = (module, model, tokenizer, texts)
    public_batches = render_batches(*render, public[:, :-1], public[:, -1], batch_size)
    victim_batches = render_batches(*render, histories, targets, batch_size)
    curve = token_recovery(model, public_batches, victim_batches, k_fronts, ridge)
    return {
        "attack": ATTACK,
        "public_texts": len(public),
        "victims": len(histories),
        "curve": curve,
        "backbone": module.backbone_name,
        "ridge": ridge,
        "seed": seed,
    }
