"""The server's strongest simple attack on ``h_front``: run its own copy of the client's front.

The server holds the public base model and, every round, the client's parameters (LoRA adapter
and item components: the ID embeddings that make an item's input vector). So it can run the
client's front itself. In a causal front a position's hidden state depends only on the tokens up
to it, so the server decodes a victim's input left to right: at each position it runs its front
on the decoded prefix followed by each candidate and keeps the candidate whose hidden state is
nearest (L2) to the one it received. Candidates are the ``shortlist`` nearest items of a linear
inversion fitted on public sequences through the same front copy (:mod:`fellrec.models.inversion`),
which keeps the attack to ``shortlist`` forward passes per position instead of the catalog's.

With the parameters the client used (at evaluation the client runs exactly what the server sent)
the attack recovers what the linear map already does and more; with stale ones (hidden states
sent during a round, parameters from its start) it measures how much the round's drift protects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.inversion import Batch, _eval_mode, _Walker, fit_inversion
from fellrec.models.split import InputEmbedder, SplitModel, new_kv_cache
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.transport import LocalTransport

ATTACK = "front-copy"


def front_states(
    model: nn.Module,
    batches: Sequence[Batch],
    k_fronts: Sequence[int],
    embed: InputEmbedder | None = None,
    causal: bool = False,
) -> dict[int, list[Tensor]]:
    """The hidden states ``(B, T, H)`` each batch sends at every split point (what crosses).

    Args:
        model: The model as the client runs it (its adapter active).
        batches: ``(input_ids, attention_mask[, content])`` of the victims.
        k_fronts: Split points.
        embed: How the client embeds its input ids (item tokens), or None for the model's own.
        causal: Whether the front runs causally.
    """
    walker = _Walker(model, batches, embed, causal)
    states: dict[int, list[Tensor]] = {}
    with _eval_mode(model), torch.inference_mode():
        for k in sorted(set(k_fronts)):
            walker.advance(k)
            states[k] = [hidden.detach().clone() for hidden, _, _ in walker.states]
    return states


def shortlist_candidates(predicted: Tensor, table: Tensor, size: int) -> Tensor:
    """The ``size`` rows of ``table`` with the highest cosine similarity to each prediction."""
    rows = nn.functional.normalize(predicted.float(), dim=-1)
    vectors = nn.functional.normalize(table.float(), dim=-1).to(rows.device)
    return (rows @ vectors.T).topk(min(size, vectors.shape[0]), dim=-1).indices


def _decode(
    front: SplitModel,
    victims: Tensor,
    ids: Tensor,
    mask: Tensor,
    candidates: Tensor,
    defence: HiddenDefence,
) -> Tensor:
    """Greedy left-to-right decoding of one batch.

    Args:
        front: The server's front copy.
        victims: The received hidden states ``(B, T, H)``.
        ids: The victims' ids ``(B, T)`` (only their padding layout is used).
        mask: ``(B, T)`` attention mask.
        candidates: Shortlisted ids per position ``(B, T, K)``.
        defence: The clients' defence: each candidate's state is clipped as the client's would
            be (the noise is isotropic, so the nearest clipped state is the likeliest one).

    Returns:
        The decoded ids ``(B, T)`` (unchanged where ``mask`` is 0).
    """
    if front.family == "decoder":
        return _decode_cached(front, victims, ids, mask, candidates, defence)
    return _decode_recomputed(front, victims, ids, mask, candidates, defence)


def _nearest(hidden: Tensor, wanted: Tensor, candidates: Tensor, defence: HiddenDefence) -> Tensor:
    """Per row, the candidate whose (clipped) state ``hidden`` is nearest to ``wanted``.

    Args:
        hidden: Candidate states ``(R*K, H)``, row-major by row then candidate.
        wanted: The received states ``(R, H)``.
        candidates: ``(R, K)`` ids.
        defence: Clips the candidates' states as the client's are clipped.

    Returns:
        ``(R,)`` indices into each row's ``K`` candidates.
    """
    rows, count = candidates.shape
    clipped = defence.clip_only(hidden).float().view(rows, count, -1)
    return (clipped - wanted.float()[:, None]).norm(dim=-1).argmin(1)


def _decode_cached(
    front: SplitModel,
    victims: Tensor,
    ids: Tensor,
    mask: Tensor,
    candidates: Tensor,
    defence: HiddenDefence,
) -> Tensor:
    """:func:`_decode` for a decoder front: each candidate is one new token on a KV cache.

    Every row is held ``K`` times (one copy per candidate), so a position costs ``B * K`` new
    tokens through the front's projections and MLPs instead of ``B * K`` prefixes (only
    attention and the cache's copies still grow with the position): on a ~140-token generative
    prompt of SmolLM2 the attack ran 11x faster. After each position every copy of a row takes the
    winner's cache, which holds exactly the decoded prefix (the copies differ only in their
    last token). Positions where ``mask`` is 0 are run too (their keys are masked), so the cache
    stays aligned with the mask.
    """
    batch, length = ids.shape
    count = candidates.shape[-1]
    decoded = ids.clone()
    copies_mask = mask.repeat_interleave(count, dim=0)  # (B*K, T)
    first_copy = torch.arange(batch, device=ids.device) * count
    cache = new_kv_cache(front.inner.config)
    for t in range(length):
        position = torch.tensor([t], device=ids.device)
        tokens = candidates[:, t].reshape(-1, 1)  # (B*K, 1)
        hidden, _ = front.front_step(tokens, copies_mask[:, : t + 1], cache, position)
        winner = _nearest(hidden[:, -1], victims[:, t], candidates[:, t], defence)
        real = mask[:, t].bool()
        winner = torch.where(real, winner, torch.zeros_like(winner))
        chosen = candidates[:, t].gather(1, winner[:, None])[:, 0]
        decoded[:, t] = torch.where(real, chosen, ids[:, t])
        cache.reorder_cache((first_copy + winner).repeat_interleave(count))
    return decoded


def _decode_recomputed(
    front: SplitModel,
    victims: Tensor,
    ids: Tensor,
    mask: Tensor,
    candidates: Tensor,
    defence: HiddenDefence,
) -> Tensor:
    """:func:`_decode` for a causal encoder front (no KV cache): each prefix run again."""
    decoded = ids.clone()
    count = candidates.shape[-1]
    for t in range(ids.shape[1]):
        rows = mask[:, t].bool().nonzero().flatten()
        if len(rows) == 0:
            continue
        prefix = decoded[rows, : t + 1].repeat_interleave(count, dim=0)  # (R*K, t+1)
        prefix[:, t] = candidates[rows, t].reshape(-1)
        prefix_mask = mask[rows, : t + 1].repeat_interleave(count, dim=0)
        hidden = front.front(prefix, prefix_mask)[0][:, t]  # (R*K, H)
        winner = _nearest(hidden, victims[rows, t], candidates[rows, t], defence)
        decoded[rows, t] = candidates[rows, t].gather(1, winner[:, None])[:, 0]
    return decoded


def front_copy_recovery(
    model: nn.Module,
    public_batches: Sequence[Batch],
    victim_batches: Sequence[Batch],
    victim_states: dict[int, list[Tensor]],
    table: Tensor,
    embed: InputEmbedder | None = None,
    causal: bool = False,
    shortlist: int = 16,
    ridge: float = 1e-3,
    defence: HiddenDefence | None = None,
    seed: int = 0,
) -> list[dict[str, float | int]]:
    """The front-copy attack's recovery rate at each split point of ``victim_states``.

    Args:
        model: The server's copy of the client's model (its adapter as the server knows it).
        public_batches: Public inputs the shortlist's linear map is fitted on.
        victim_batches: The victims' inputs (the truth, and their padding layout).
        victim_states: :func:`front_states` of the victims, as the client sent them (defended,
            when the clients run ``defence``).
        table: The vectors of the candidates ``(V, H)`` (the item vectors as the server knows
            them, or the token embeddings), row ``i`` for id ``i``.
        embed: The server's copy of the client's input embedder (None: the model's own).
        causal: Whether the front runs causally (item tokens through an encoder).
        shortlist: Candidates per position (from the linear map's nearest rows).
        ridge: Relative ridge penalty of that map.
        defence: The clients' ``model.hidden_defence``, known to the server: its public states
            for the map are defended alike, its candidates' states clipped alike.
        seed: Seed of the defence's noise on the public states.

    Returns:
        One dict per split point, ascending: ``k_front``, ``token_recovery``, ``tokens``,
        ``content_recovery``, ``content_tokens`` (as :func:`~fellrec.models.inversion.
        token_recovery`) and ``shortlist_recall`` (positions whose true id was shortlisted: the
        attack's ceiling).

    Raises:
        ValueError: For ``shortlist < 1`` or a split point outside the model.
    """
    if shortlist < 1:
        raise ValueError(f"the shortlist needs at least one candidate, got {shortlist}")
    layers = num_blocks(model)
    bad = [k for k in victim_states if not 0 <= k <= layers - 1]
    if bad:
        raise ValueError(f"k_front values {bad} are outside [0, {layers - 1}] for this model")
    vectors = table.detach().to("cpu", torch.float64)
    public = _Walker(model, public_batches, embed, causal)
    defend = defence if defence is not None else HiddenDefence()
    generator = torch.Generator().manual_seed(seed)
    curve: list[dict[str, float | int]] = []
    with _eval_mode(model), torch.inference_mode():
        for k in sorted(victim_states):
            public.advance(k)
            states, ids, _ = public.collect()
            weight, offset = fit_inversion(defend(states, generator), vectors[ids], ridge)
            front = SplitModel(model, plan_split(layers, k, 0), LocalTransport(), embed, causal)
            hits = content_hits = listed = total = counted = 0
            for batch, hidden in zip(victim_batches, victim_states[k], strict=True):
                input_ids, mask = batch[0].to(hidden.device), batch[1].to(hidden.device)
                real = mask.bool()
                content = batch[2].to(hidden.device).bool() & real if len(batch) > 2 else real
                flat = hidden.to("cpu", torch.float64).reshape(-1, hidden.shape[-1])
                candidates = shortlist_candidates(flat @ weight + offset, vectors, shortlist)
                candidates = candidates.view(*input_ids.shape, -1).to(hidden.device)
                decoded = _decode(front, hidden, input_ids.clamp(min=0), mask, candidates, defend)
                correct = (decoded == input_ids) & real
                hits += int(correct.sum())
                content_hits += int((correct & content).sum())
                listed += int(((candidates == input_ids[..., None]).any(-1) & real).sum())
                total += int(real.sum())
                counted += int(content.sum())
            curve.append(
                {
                    "k_front": int(k),
                    "token_recovery": hits / max(total, 1),
                    "tokens": total,
                    "content_recovery": content_hits / max(counted, 1),
                    "content_tokens": counted,
                    "shortlist_recall": listed / max(total, 1),
                }
            )
    return curve
