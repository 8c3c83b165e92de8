"""How well a server's guess matches a client's private truth (pure functions).

A membership guess is a score per item (higher: more likely in the client's data) scored against
the true set: ROC AUC (0.5 is chance, 1 a perfect separation) and precision and recall among the
``k`` highest scores, with ``k`` the true set's size (a server that knows how many items a client
has; at that ``k`` precision equals recall). A count guess is scored by Spearman's rank
correlation with the true counts. scikit-learn and SciPy compute them.

The direction of a signal is not always known in advance (under Adam an item a client never saw
can move *more* than one it trained on): :func:`membership_scores` also reports the AUC of the
better of the two directions, which a server learns by simulating one client on public data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import Tensor


def _numpy(values: Tensor) -> np.ndarray:
    return values.detach().to("cpu", torch.float64).numpy().reshape(-1)


def roc_auc(scores: Tensor, members: Tensor) -> float:
    """ROC AUC of ``scores`` separating ``members`` from the rest (ties count one half).

    Args:
        scores: ``(I,)`` the server's score per item.
        members: ``(I,)`` bool; the items truly in the client's data.

    Returns:
        The AUC, or NaN when every item is a member or none is (nothing to separate).
    """
    truth = _numpy(members) > 0
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, _numpy(scores)))


def precision_recall_at_k(scores: Tensor, members: Tensor, k: int) -> tuple[float, float]:
    """Precision and recall of the ``k`` highest-scored items (ties broken by item index).

    Args:
        scores: ``(I,)`` the server's score per item.
        members: ``(I,)`` bool; the items truly in the client's data.
        k: How many items the server names (``0 <= k <= I``).

    Returns:
        ``(precision, recall)``; NaN where undefined (``k == 0``, or no member).

    Raises:
        ValueError: For ``k`` outside ``[0, I]``.
    """
    values, truth = _numpy(scores), _numpy(members) > 0
    if not 0 <= k <= len(values):
        raise ValueError(f"k={k} is outside [0, {len(values)}]")
    named = np.argsort(-values, kind="stable")[:k]
    hits = int(truth[named].sum())
    total = int(truth.sum())
    return (hits / k if k else math.nan, hits / total if total else math.nan)


def spearman(guess: Tensor, truth: Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 2 or constant."""
    x, y = _numpy(guess), _numpy(truth)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)


def membership_scores(scores: Tensor, counts: Tensor) -> dict[str, float]:
    """Score one membership-and-count guess against a client's true item counts.

    Args:
        scores: ``(I,)`` the server's score per item (higher: in the client's data, and more).
        counts: ``(I,)`` the client's true interaction count per item (0: not in its data).

    Returns:
        ``auc`` (this direction), ``auc_either`` (the better direction: ``max(auc, 1 - auc)``),
        ``precision_at_size`` and ``recall_at_size`` (the top ``|S|`` items in the better
        direction, ``|S|`` the true set size: equal by construction), ``spearman`` (the guess
        against the counts, over the true members, in the better direction), ``members``
        (``|S|``) and ``items``.
    """
    members = counts > 0
    size = int(members.sum())
    auc = roc_auc(scores, members)
    flip = not math.isnan(auc) and auc < 0.5
    oriented = -scores if flip else scores
    precision, recall = precision_recall_at_k(oriented, members, size)
    return {
        "auc": auc,
        "auc_either": max(auc, 1.0 - auc) if not math.isnan(auc) else math.nan,
        "precision_at_size": precision,
        "recall_at_size": recall,
        "spearman": spearman(oriented[members], counts[members]),
        "members": size,
        "items": int(counts.numel()),
    }
