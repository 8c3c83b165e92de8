"""From per-user metric values to per-client, overall (user-weighted) and balance summaries.

Evaluation accumulates *sums* per client (``(N, M)``) and user counts (``(N,)``): sums add up
exactly
across batches and across data-parallel processes, so a run on two processes reports the same
numbers
as a run on one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fellrec.metrics.balance import balance_statistics

#: Cut-offs reported everywhere.
DEFAULT_KS = (5, 10, 20)
#: Metric families computed for each cut-off.
METRIC_FAMILIES = ("recall", "ndcg", "hit", "mrr")
#: Metrics whose balance across clients is summarized.
BALANCE_METRICS = tuple(f"{f}@{k}" for f in ("recall", "ndcg") for k in DEFAULT_KS)


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Names of all metrics in a fixed order, e.g. ``recall@5``."""
    return [f"{family}@{k}" for family in METRIC_FAMILIES for k in ks]


def client_sums(
    per_user: Mapping[str, torch.Tensor],
    clients: torch.Tensor,
    num_clients: int,
    names: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-user metric values by client.

    Args:
        per_user: Metric name -> values ``(U,)``.
        clients: Client of each user ``(U,)``.
        num_clients: N.
        names: Metric order of the columns.

    Returns:
        Sums ``(N, M)`` (float64) and user counts ``(N,)`` (float64).
    """
    values = torch.stack([per_user[name].double() for name in names], dim=1)  # (U, M)
    sums = torch.zeros(num_clients, len(names), dtype=torch.float64)
    sums.index_add_(0, clients.long(), values)
    counts = torch.zeros(num_clients, dtype=torch.float64)
    counts.index_add_(0, clients.long(), torch.ones(len(clients), dtype=torch.float64))
    return sums, counts


def summarize(
    sums: torch.Tensor,
    counts: torch.Tensor,
    names: Sequence[str],
    balance_metrics: Sequence[str] = BALANCE_METRICS,
) -> dict[str, Any]:
    """Build the ``overall`` / ``clients`` / ``balance`` summary of ``results.json``.

    Args:
        sums: Per-client metric sums ``(N, M)``.
        counts: Evaluated users per client ``(N,)``.
        names: Metric names of the columns.
        balance_metrics: Metrics whose balance statistics are reported.

    Returns:
        ``{"overall": {metric: value, "users": n}, "clients": {"<id>": {"users": n, metric: value}},
        "balance": {metric: {mean, std, min, max, gap, gini, jain}}}``. Clients without evaluated
        users report ``users: 0`` and no metric values, and are left out of the balance statistics.
    """
    total = float(counts.sum())
    if total == 0:
        raise ValueError("no user was evaluated (every client's evaluation set is empty)")
    overall: dict[str, float] = {n: float(sums[:, j].sum() / total) for j, n in enumerate(names)}
    overall["users"] = int(total)
    per_client = sums / counts.clamp_min(1).unsqueeze(1)  # (N, M)
    clients: dict[str, dict[str, float]] = {}
    for client in range(sums.shape[0]):
        row: dict[str, float] = {"users": int(counts[client])}
        if counts[client] > 0:
            row.update({n: float(per_client[client, j]) for j, n in enumerate(names)})
        clients[str(client)] = row
    evaluated = counts > 0
    balance = {
        name: balance_statistics(per_client[evaluated, names.index(name)].tolist())
        for name in balance_metrics
        if name in names
    }
    return {"overall": overall, "clients": clients, "balance": balance}
