"""Per-client means and balance statistics across clients (method.md, section 6).

FELLRec's claim is about *balance*: not only the average client should do well, but also the worst
one. These functions turn per-user metric values into per-client means, and per-client means into
spread statistics (std, worst client, max-min gap, Gini, Jain's fairness index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def group_means(values: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` within each group, e.g. a per-user metric averaged per client.

    Args:
        values: One value per user, float, shape ``(U,)``.
        groups: Group (client) index of each user, integer, shape ``(U,)``, in ``0..num_groups-1``.
        num_groups: Number of groups ``G``.

    Returns:
        ``(means, counts)``: the mean per group, shape ``(G,)`` in the dtype of ``values`` (NaN
        for a group with no user), and the number of users per group, int64, shape ``(G,)``.

    Raises:
        ValueError: If shapes differ, ``groups`` is not integer, or a group index is out of range.
    """
    if values.ndim != 1 or groups.shape != values.shape:
        raise ValueError(
            f"values and groups must both have shape (U,), got {tuple(values.shape)} and "
            f"{tuple(groups.shape)}"
        )
    if groups.is_floating_point() or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(f"group indices must lie in 0..{num_groups - 1}")
    values = values if values.is_floating_point() else values.to(torch.float32)
    groups = groups.long()
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    sums.index_add_(0, groups, values)  # (G,)
    counts = torch.bincount(groups, minlength=num_groups)  # (G,) int64
    # 0 / 0 gives NaN, which is exactly the "no evaluated user" marker balance_statistics skips.
    means = sums / counts.to(values.dtype)
    return means, counts


def balance_statistics(values: Sequence[float] | Tensor) -> dict[str, float]:
    """Spread of one metric across clients.

    NaN entries (clients without evaluated users) are ignored. The statistics are meant for
    non-negative metrics (recall, NDCG, ...); Gini and Jain's index have no meaning otherwise.

    * ``mean``, ``std`` (population, divides by n), ``min`` (worst client), ``max``,
      ``gap`` = max - min.
    * ``gini`` = sum_i sum_j |x_i - x_j| / (2 n^2 mean); 0 for perfect equality, and 0 when the mean
      is 0 (all clients equally at zero).
    * ``jain`` = (sum x)^2 / (n sum x^2); 1 for perfect equality, 1/n when one client has it all,
      and 1 when all values are 0.

    Args:
        values: One value per client.

    Returns:
        The statistics above as Python floats.

    Raises:
        ValueError: If no non-NaN value is left, a value is infinite or negative, or the input is
            not one-dimensional.
    """
    x = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {tuple(x.shape)}")
    x = x[~torch.isnan(x)]
    if x.numel() == 0:
        raise ValueError("balance_statistics needs at least one non-NaN value")
    if bool(torch.isinf(x).any()):
        raise ValueError("values must be finite (NaN is allowed and skipped)")
    if bool((x < 0).any()):
        raise ValueError("balance statistics need non-negative values")

    return {name: float(value) for name, value in spread_statistics(x).items()}


def spread_statistics(values: Tensor) -> dict[str, Tensor]:
    """:func:`balance_statistics` of many sets of clients at once (e.g. bootstrap resamples).

    Args:
        values: ``(..., n)`` non-negative, finite float64 values: the last dimension holds the
            clients (no NaN: leave clients without users out first).

    Returns:
        ``mean``, ``std``, ``min``, ``max``, ``gap``, ``gini``, ``jain``, each of shape ``(...)``.
    """
    x = values
    n = x.shape[-1]
    total = x.sum(dim=-1)
    mean = total / n
    sorted_x = torch.sort(x, dim=-1).values  # (..., n) ascending
    # sum_i sum_j |x_i - x_j| = 2 * sum_i (2i - n - 1) x_(i) with i = 1..n over the sorted values:
    # O(n log n) instead of building the n x n difference matrix.
    coef = 2.0 * torch.arange(1, n + 1, dtype=x.dtype, device=x.device) - n - 1.0
    abs_diff_sum = 2.0 * (coef * sorted_x).sum(dim=-1)
    positive = mean > 0
    gini = torch.where(
        positive, abs_diff_sum / (2.0 * n * n * torch.where(positive, mean, 1.0)), 0.0
    )
    square_sum = (x * x).sum(dim=-1)
    nonzero = square_sum > 0
    jain = torch.where(nonzero, total * total / (n * torch.where(nonzero, square_sum, 1.0)), 1.0)
    low, high = sorted_x[..., 0], sorted_x[..., -1]
    return {
        "mean": mean,
        "std": x.std(dim=-1, correction=0),
        "min": low,
        "max": high,
        "gap": high - low,
        "gini": gini,
        "jain": jain,
    }
