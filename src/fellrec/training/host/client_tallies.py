"""What a host tallies per client: a round's training statistics and an evaluation's metrics.

Both are summed over a run's processes on request (``reduce_sum``), so a data-parallel run reports
what one process would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fellrec.metrics.ranking import ranking_metrics
from fellrec.metrics.summary import DEFAULT_KS

#: Sums a tensor over the run's processes (the identity in one process).
ReduceSum = Callable[[torch.Tensor], torch.Tensor]
#: Gathers a picklable object from every process into a list (``[obj]`` in one process).
GatherObjects = Callable[[Any], list[Any]]


def padded_mask(padded: torch.Tensor, num_items: int) -> torch.Tensor:
    """Dense ``(B, I)`` bool mask from item indices ``(B, L)`` padded with ``-1``."""
    mask = torch.zeros(padded.shape[0], num_items, dtype=torch.bool, device=padded.device)
    rows, cols = (padded >= 0).nonzero(as_tuple=True)
    mask[rows, padded[rows, cols]] = True
    return mask


class RoundStatistics:
    """Each client's summed training loss, example count and divergence flag in one round.

    Args:
        num_clients: N.
    """

    def __init__(self, num_clients: int) -> None:
        self.loss_sum = torch.zeros(num_clients, dtype=torch.float64)
        self.examples = torch.zeros(num_clients, dtype=torch.float64)
        self.diverged = torch.zeros(num_clients, dtype=torch.bool)

    def add(self, client: int, loss_sum: float, examples: float) -> None:
        """Count a micro-batch of ``client``: its summed loss over ``examples`` targets.

        (Under DP-SGD ``examples`` is the step's expected number of users, not a count.)
        """
        self.loss_sum[client] += loss_sum
        self.examples[client] += examples

    def collect(self, reduce_sum: ReduceSum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss sums, example counts and divergence flags ``(N,)`` each, over all processes."""
        stacked = reduce_sum(torch.stack([self.loss_sum, self.examples, self.diverged.double()]))
        return stacked[0], stacked[1], stacked[2] > 0


class EvaluationSums:
    """Each client's metric sums and user count over one evaluation, and every user's values.

    Args:
        num_clients: N.
        names: The metric names, one column each.
    """

    def __init__(self, num_clients: int, names: list[str]) -> None:
        self.names = names
        self.sums = torch.zeros(num_clients, len(names), dtype=torch.float64)
        self.counts = torch.zeros(num_clients, dtype=torch.float64)
        #: Per evaluated batch: the client of each user and their metric values (for the
        #: bootstrap intervals over users).
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: Per evaluated batch: the user indices (-1 where not given), for the slices.
        self.user_rows: list[torch.Tensor] = []

    def add(self, client: int, values: torch.Tensor, users: torch.Tensor | None = None) -> None:
        """Count a batch of ``client``'s users: their metric values ``(b, M)`` (and indices)."""
        self.sums[client] += values.sum(0)
        self.counts[client] += values.shape[0]
        self.rows.append((torch.full((values.shape[0],), client), values))
        if users is None:
            users = torch.full((values.shape[0],), -1)
        self.user_rows.append(users.detach().cpu().long())

    def add_scores(
        self,
        client: int,
        scores: torch.Tensor,
        targets: torch.Tensor,
        consumed: torch.Tensor,
        users: torch.Tensor | None = None,
    ) -> None:
        """Rank a batch of ``client``'s users and count their metrics.

        Args:
            client: Whose users.
            scores: Every item's score per user ``(b, I)``.
            targets: Each user's held-out items, padded with ``-1`` ``(b, L)``.
            consumed: Each user's already-consumed items (excluded from the ranking), padded
                with ``-1``.
            users: The users' indices ``(b,)`` (for the evaluation slices).
        """
        num_items = scores.shape[1]
        per_user = ranking_metrics(
            scores, padded_mask(targets, num_items), padded_mask(consumed, num_items), DEFAULT_KS
        )
        values = torch.stack([per_user[n].double().cpu() for n in self.names], dim=1)
        self.add(client, values, users)

    def collect(self, reduce_sum: ReduceSum) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client metric sums ``(N, M)`` and user counts ``(N,)``, all processes."""
        stacked = reduce_sum(torch.cat([self.sums, self.counts.unsqueeze(1)], dim=1))
        return stacked[:, :-1], stacked[:, -1]

    def user_values(self, gather: GatherObjects) -> tuple[torch.Tensor, torch.Tensor]:
        """Every evaluated user's client ``(U,)`` and metric values ``(U, M)``, all processes."""
        rows = [row for part in gather(self.rows) for row in part]
        if not rows:
            empty = torch.zeros(0, len(self.names), dtype=torch.float64)
            return torch.zeros(0, dtype=torch.long), empty
        return torch.cat([c for c, _ in rows]), torch.cat([v for _, v in rows])

    def user_indices(self, gather: GatherObjects) -> torch.Tensor:
        """Every evaluated user's index ``(U,)`` (-1: not given), aligned with :meth:`user_values`.

        ``gather`` is a collective: every process calls it, in the same order as
        :meth:`user_values`.
        """
        rows = [row for part in gather(self.user_rows) for row in part]
        return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
