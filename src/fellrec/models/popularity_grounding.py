"""BIGRec's popularity term: ranking a generated title's grounding scores with item popularity.

BIGRec grounds a generated title onto the catalog by embedding distance and can then inject
what the training data says about each item (its popularity) with a weight gamma. fellrec's form
of the term (``model.prompt.popularity_gamma``):

    score(u, i) = standardize_u(grounding(u, i)) + gamma * standardize(log(1 + count_i))

Both parts are standardized (zero mean, unit standard deviation: the grounding scores per user
over the items they can be ranked, the log counts over the catalog), so gamma weighs two things
on the same scale whatever the embedding's norms or the data's size. gamma 0 leaves the ranking
to the grounding alone. Under constrained decoding the beams' items stay on top in beam order and
the term orders only the items after them.

The counts are the client's own training interactions, so the term is computed where the data
is: it changes only that client's ranking and nothing of it leaves the client.
"""

from __future__ import annotations

import torch


def standardized_log_popularity(counts: torch.Tensor) -> torch.Tensor:
    """``log(1 + counts)`` standardized over the items ``(I,)`` (float64).

    A catalog whose counts are all equal (no training data, or every item alike) carries no
    popularity: every item gets 0.

    Args:
        counts: Training interactions per item ``(I,)``.
    """
    log_counts = torch.log1p(counts.double())
    spread = log_counts.std() if log_counts.numel() > 1 else log_counts.new_zeros(())
    if not torch.isfinite(spread) or spread <= 0:
        return torch.zeros_like(log_counts)
    return (log_counts - log_counts.mean()) / spread


def row_standardized(scores: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean over finite entries, over their std (``-inf`` stays ``-inf``)."""
    finite = scores.isfinite()
    values = torch.where(finite, scores, torch.zeros_like(scores))
    counts = finite.sum(dim=1, keepdim=True).clamp_min(1)
    mean = values.sum(dim=1, keepdim=True) / counts
    centered = torch.where(finite, scores - mean, torch.zeros_like(scores))
    std = (centered.pow(2).sum(dim=1, keepdim=True) / counts).sqrt().clamp_min(1e-12)
    return torch.where(finite, centered / std, scores)


def with_popularity(
    scores: torch.Tensor, log_popularity: torch.Tensor, gamma: float, constrained: bool
) -> torch.Tensor:
    """BIGRec's popularity-informed ranking: standardized score + gamma * standardized log pop.

    Args:
        scores: Grounding scores ``(B, I)``, higher is better, ``-inf`` for items never ranked.
            Under constrained decoding the beams' items score >= 1 and every other item <= 0
            (as :meth:`~fellrec.models.generative.GenerativeRecommender.recommend` scores them).
        log_popularity: :func:`standardized_log_popularity` of the items ``(I,)``.
        gamma: The term's weight (>= 0).
        constrained: Whether ``scores`` come from constrained decoding (beams on top).

    Returns:
        Scores ``(B, I)`` in ``scores``' dtype, or float32 for a narrower one (so that beams
        stay distinct above the rest); ``-inf`` entries stay ``-inf``. Under constrained decoding
        each beam item scores its beam score plus the row's best other score, whatever gamma.
    """
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    bonus = gamma * log_popularity.to(scores.dtype)
    if not constrained:
        return row_standardized(scores) + bonus
    beams = scores >= 1.0
    rest = row_standardized(scores.masked_fill(beams, float("-inf"))) + bonus
    # Every beam above the row's best other item (>= 0), in beam order (beam scores are >= 1).
    best = rest.masked_fill(~rest.isfinite(), 0.0).amax(dim=1, keepdim=True).clamp_min(0.0)
    return torch.where(beams, scores + best, rest)
