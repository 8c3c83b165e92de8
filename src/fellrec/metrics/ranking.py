"""Full-ranking top-K metrics (Recall, NDCG, HitRate, MRR), per user and vectorized.

Every item of the catalog is ranked for every user (no sampled negatives); items the user already
consumed are masked out first. All K are read off a single ``torch.topk(max(ks))`` call.

Conventions (method.md, section 6):

* Recall@K = (targets in the top K) / |targets|.
* NDCG@K uses binary gains: DCG@K = sum over ranks r <= K of rel_r / log2(r + 1) (ranks from 1), and
  the ideal DCG places min(|targets|, K) relevant items at the top.
* HitRate@K = 1 if any target is in the top K, else 0.
* MRR@K = 1 / rank of the first target in the top K, or 0 when none is.

Ties: items with equal scores are ordered by ``torch.topk``. That order is deterministic for the
same input on the same device, but it is an implementation detail (on CPU it is *not* by item
index). Callers whose scores tie often (e.g. popularity counts) should break ties themselves before
calling, as :func:`fellrec.metrics.popularity.evaluate_popularity` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: Metric names produced for every K, in output order.
METRIC_NAMES = ("recall", "ndcg", "hit", "mrr")


def check_ks(ks: Sequence[int], num_items: int) -> list[int]:
    """Validate top-K cut-offs against the catalog size.

    Args:
        ks: Cut-offs K.
        num_items: Number of items ``I``.

    Returns:
        The cut-offs as a list of Python ints.

    Raises:
        ValueError: If ``ks`` is empty or a K is not an integer in ``1..num_items`` (the message
            names the K).
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every K must be a positive integer, got K={k!r}")
        if k > num_items:
            raise ValueError(f"K={k} is larger than the number of items ({num_items})")
    return [int(k) for k in ks]


def ranking_metrics(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | None = None,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, Tensor]:
    """Per-user Recall@K, NDCG@K, HitRate@K and MRR@K from a full ranking of all items.

    Excluded items get a score of ``-inf`` before ranking, so they sink below every other item. They
    can still fill the top K when fewer than K items remain, but never count as hits: a target that
    is also excluded is rejected as an input error.

    Args:
        scores: Scores, higher is better, float, shape ``(U, I)``.
        targets: Relevant items, bool, shape ``(U, I)``; every user needs at least one.
        exclude: Items to drop from the ranking (e.g. already consumed), bool, shape ``(U, I)``.
        ks: Cut-offs; each must be at least 1 and at most ``I``.

    Returns:
        ``{"recall@K", "ndcg@K", "hit@K", "mrr@K"}`` for each K, each a tensor of shape ``(U,)``
        (float32, or float64 when ``scores`` is float64).

    Raises:
        ValueError: If shapes or dtypes do not match, a user has no target, a target is excluded,
            scores contain NaN, or a K is not in ``1..I``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (U, I), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating tensor, got {scores.dtype}")
    if targets.shape != scores.shape or targets.dtype != torch.bool:
        raise ValueError(
            f"targets must be a bool tensor of shape {tuple(scores.shape)}, "
            f"got {targets.dtype} {tuple(targets.shape)}"
        )
    if exclude is not None and (exclude.shape != scores.shape or exclude.dtype != torch.bool):
        raise ValueError(
            f"exclude must be a bool tensor of shape {tuple(scores.shape)}, "
            f"got {exclude.dtype} {tuple(exclude.shape)}"
        )
    num_users, num_items = scores.shape
    ks = check_ks(ks, num_items)
    out_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32

    num_targets = targets.sum(dim=1)  # (U,)
    if num_users and bool((num_targets == 0).any()):
        empty = torch.nonzero(num_targets == 0).flatten()[:5].tolist()
        raise ValueError(f"every user needs at least one target; users at rows {empty} have none")
    # topk would rank NaN above every real score, silently turning a model bug into "good" metrics.
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    if exclude is not None:
        if bool((targets & exclude).any()):
            raise ValueError("some targets are also excluded; a masked item cannot be recommended")
        scores = scores.masked_fill(exclude, float("-inf"))

    k_max = max(ks)
    top_items = torch.topk(scores, k_max, dim=1, largest=True, sorted=True).indices  # (U, Kmax)
    hits = targets.gather(1, top_items).to(out_dtype)  # (U, Kmax), 1.0 where a target sits

    ranks = torch.arange(1, k_max + 1, dtype=out_dtype, device=scores.device)  # (Kmax,)
    discount = 1.0 / torch.log2(ranks + 1.0)  # (Kmax,)
    hits_cum = hits.cumsum(dim=1)  # (U, Kmax): hits within the top r
    dcg_cum = (hits * discount).cumsum(dim=1)  # (U, Kmax): DCG@r
    ideal_cum = discount.cumsum(dim=0)  # (Kmax,): IDCG@r when at least r targets exist

    # argmax returns the first maximal index, i.e. the position of the first hit (0 when none).
    first_hit = hits.argmax(dim=1)  # (U,)
    reciprocal = 1.0 / (first_hit.to(out_dtype) + 1.0)  # (U,)
    any_hit = hits_cum[:, -1] > 0  # (U,)

    num_targets_f = num_targets.to(out_dtype)
    results: dict[str, Tensor] = {}
    for k in ks:
        col = k - 1
        ideal = ideal_cum[(num_targets.clamp(max=k) - 1).clamp(min=0)]  # (U,) IDCG@k per user
        hit_in_k = any_hit & (first_hit < k)  # (U,)
        results[f"recall@{k}"] = hits_cum[:, col] / num_targets_f
        results[f"ndcg@{k}"] = dcg_cum[:, col] / ideal
        results[f"hit@{k}"] = hit_in_k.to(out_dtype)
        results[f"mrr@{k}"] = torch.where(hit_in_k, reciprocal, torch.zeros_like(reciprocal))
    return results


def index_mask(index_lists: Sequence[np.ndarray | Sequence[int]], num_items: int) -> Tensor:
    """Dense per-user item mask from per-user lists of item indices.

    Args:
        index_lists: For each of ``U`` users, the item indices to set (duplicates are harmless).
        num_items: Number of items ``I``.

    Returns:
        A bool tensor of shape ``(U, I)`` that is True exactly at the listed items.

    Raises:
        ValueError: If an index is outside ``0..num_items-1``.
    """
    num_users = len(index_lists)
    mask = torch.zeros(num_users, num_items, dtype=torch.bool)
    arrays = [np.asarray(items, dtype=np.int64).reshape(-1) for items in index_lists]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=num_users)
    if lengths.sum() == 0:
        return mask
    cols = np.concatenate(arrays)  # (L,) all listed items, user after user
    if cols.min() < 0 or cols.max() >= num_items:
        bad = int(cols[(cols < 0) | (cols >= num_items)][0])
        raise ValueError(f"item index {bad} is outside 0..{num_items - 1}")
    rows = np.repeat(np.arange(num_users, dtype=np.int64), lengths)  # (L,) owning user of each
    mask[torch.from_numpy(rows), torch.from_numpy(cols)] = True
    return mask
