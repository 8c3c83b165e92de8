"""The honest-but-curious server's attack on split execution: recover tokens from ``h_front``.

The server knows the public base model (not the clients' adapters) and receives the hidden states
after the client's embeddings and first ``k_front`` blocks. It runs public text through the same
front, fits a linear map (ridge least squares, closed form, float64 on the CPU) from each
position's hidden state onto the input-embedding row of that position's token, then maps the
victims' hidden states and takes the nearest embedding row by cosine similarity. The token
recovery rate is the fraction of the victims' real (non-pad) tokens recovered exactly; it is near
1 at ``k_front = 0`` (embeddings only) and falls, slowly, as more blocks stay on the client
(method.md, section 6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.split import InputEmbedder, SplitModel
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.transport import LocalTransport

#: ``(input_ids, attention_mask)``, both ``(B, T)``; victims may add a ``(B, T)`` content mask.
Batch = tuple[Tensor, ...]
#: Victim positions scored against the vocabulary at once (bounds the ``(rows, V)`` matrix).
_CHUNK = 2048


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # The attacker's forward has no dropout; the caller's train/eval flags come back afterwards.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


class _Walker:
    """Hidden states of a set of batches at the split point, advanced block by block.

    The first position runs :meth:`SplitModel.front`; later ones continue from the states already
    computed with :meth:`SplitModel.middle` over just the blocks in between, so attacking several
    split points costs one pass to the deepest. Both are split.py's own code paths, so the states
    are exactly what would cross the transport.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        embed: InputEmbedder | None = None,
        causal: bool = False,
    ) -> None:
        if not batches:
            raise ValueError("the attack needs at least one batch of public and of victim text")
        self.model = model
        self.embed = embed
        self.causal = causal
        self.layers = num_blocks(model)
        self.device = next(model.parameters()).device
        self.batches = [tuple(t.to(self.device) for t in batch) for batch in batches]
        self.k: int | None = None
        self.states: list[tuple[Tensor, Tensor, Tensor]] = []

    def advance(self, k_front: int) -> None:
        """Move the held states to the split point ``k_front`` (never back to a shallower one)."""
        if self.k is not None and k_front < self.k:
            raise ValueError(f"cannot go back from k_front={self.k} to {k_front}")
        if self.k is None:
            plan = plan_split(self.layers, k_front, 0)
            front = SplitModel(self.model, plan, LocalTransport(), self.embed, self.causal)
            self.states = [front.front(batch[0], batch[1]) for batch in self.batches]
        elif k_front > self.k:
            plan = plan_split(self.layers, self.k, self.layers - k_front)
            split = SplitModel(self.model, plan, LocalTransport(), self.embed, self.causal)
            self.states = [(split.middle(h, m, p), m, p) for h, m, p in self.states]
        self.k = k_front

    def collect(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(states (n, H) float64 on the CPU, token ids (n,), counted (n,))`` of real tokens."""
        states, tokens, counted = [], [], []
        for batch, (hidden, mask, _) in zip(self.batches, self.states, strict=True):
            keep = mask.bool()
            states.append(hidden[keep].to("cpu", torch.float64))
            tokens.append(batch[0][keep].cpu())
            content = batch[2].bool() if len(batch) > 2 else keep
            counted.append(content[keep].cpu())
        return torch.cat(states), torch.cat(tokens), torch.cat(counted)


def fit_inversion(states: Tensor, targets: Tensor, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Ridge least squares ``targets ~ (states - mean) @ W + bias``, closed form in float64.

    The penalty is ``ridge`` times the mean diagonal of the centred Gram matrix, so it does not
    depend on the scale of the hidden states.

    Args:
        states: ``(n, H)`` hidden states.
        targets: ``(n, D)`` embedding rows of the true tokens.
        ridge: Relative L2 penalty (> 0 keeps the solve well posed with few public tokens).

    Returns:
        ``(W (H, D), offset (D,))`` with ``prediction = states @ W + offset``.
    """
    x, y = states.double(), targets.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram + penalty * eye, xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


def nearest_tokens(predicted: Tensor, embeddings: Tensor) -> Tensor:
    """Index of the embedding row with the highest cosine similarity to each prediction."""
    table = nn.functional.normalize(embeddings.float(), dim=-1)
    found = []
    for start in range(0, predicted.shape[0], _CHUNK):
        rows = nn.functional.normalize(predicted[start : start + _CHUNK].float(), dim=-1)
        found.append((rows.to(table.device) @ table.T).argmax(-1).cpu())
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class ItemInputs:
    """Inputs that are item tokens: how each side embeds item ids, and what the attacker knows.

    Attributes:
        table: The item vectors the attacker knows ``(I, H)`` (e.g. the public text table); it
            maps hidden states onto these rows and takes the nearest one as the item.
        public_embed: How the attacker embeds its public item sequences (with what it knows).
        victim_embed: How the victims' real inputs are embedded (their own item vectors).
        causal: Whether the front runs causally (it must match the clients' model).
    """

    table: Tensor
    public_embed: InputEmbedder
    victim_embed: InputEmbedder
    causal: bool = False


def token_recovery(
    model: nn.Module,
    public_batches: Sequence[Batch],
    victim_batches: Sequence[Batch],
    k_fronts: Sequence[int],
    ridge: float = 1e-3,
    items: ItemInputs | None = None,
    defence: HiddenDefence | None = None,
    seed: int = 0,
) -> list[dict[str, float | int]]:
    """The attack's token recovery rate at each split point.

    Args:
        model: The public base model (without the clients' adapters), as the server knows it.
        public_batches: Text the attacker has, tokenized and padded like the clients' inputs:
            ``(input_ids, attention_mask)``.
        victim_batches: The clients' real inputs, as they would reach the front:
            ``(input_ids, attention_mask)``, optionally with a third ``(B, T)`` mask of the
            *content* positions (e.g. not the fixed prompt template) scored separately.
        k_fronts: Split points to attack (each in ``[0, L - 1]``).
        ridge: Relative ridge penalty of the linear map.
        items: For inputs that are item tokens (the sequential recommender) instead of
            vocabulary tokens: how the attacker and the victims embed item ids, and the table
            of item vectors the attacker maps onto (the "tokens" recovered are then items).
        defence: ``model.hidden_defence``: the victims' states cross clipped and noised. The
            attacker knows the setting, so it defends its public states alike before fitting
            its map (the least-squares map for inputs that carry such noise).
        seed: Seed of the defence's noise on the public and victim states.

    Returns:
        One dict per distinct ``k_front``, ascending: ``k_front``, ``token_recovery`` (fraction
        of the victims' real tokens recovered exactly), ``tokens`` (their number),
        ``content_recovery`` and ``content_tokens`` (the same over the content positions; all
        real tokens when no content mask is given).

    Raises:
        ValueError: For a ``k_front`` outside ``[0, L - 1]`` or no batches.
    """
    layers = num_blocks(model)
    bad = [k for k in k_fronts if not 0 <= k <= layers - 1]
    if bad:
        raise ValueError(f"k_front values {bad} are outside [0, {layers - 1}] for this model")
    if items is None:
        lookup: Any = model  # a PreTrainedModel (or peft model): has get_input_embeddings
        embeddings = lookup.get_input_embeddings().weight.detach()
        public, victims = _Walker(model, public_batches), _Walker(model, victim_batches)
    else:
        embeddings = items.table.detach()
        public = _Walker(model, public_batches, items.public_embed, items.causal)
        victims = _Walker(model, victim_batches, items.victim_embed, items.causal)
    table = embeddings.to("cpu", torch.float64)
    defend = defence if defence is not None else HiddenDefence()
    generator = torch.Generator().manual_seed(seed)
    curve: list[dict[str, float | int]] = []
    with _eval_mode(model), torch.inference_mode():
        for k in sorted(set(k_fronts)):
            public.advance(k)
            victims.advance(k)
            states, ids, _ = public.collect()
            weight, offset = fit_inversion(defend(states, generator), table[ids], ridge)
            states, ids, content = victims.collect()
            states = defend(states, generator)  # (n, H): what the server receives
            hits = nearest_tokens(states @ weight + offset, embeddings) == ids
            total, counted = int(ids.numel()), int(content.sum())
            curve.append(
                {
                    "k_front": int(k),
                    "token_recovery": int(hits.sum()) / max(total, 1),
                    "tokens": total,
                    "content_recovery": int(hits[content].sum()) / max(counted, 1),
                    "content_tokens": counted,
                }
            )
    return curve
