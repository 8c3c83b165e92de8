"""Per-client model selection on validation (pure): each client keeps its best round's parameters.

The simulation's loop and the deployed server both select this way, so a client is tested with the
parameters of its own best validation round, and the run's ``best_round`` is the round of the best
overall score.
"""

from __future__ import annotations

from typing import Any

import torch


class ModelSelection:
    """The best validation score, round and parameters of every client, and the best round overall.

    Args:
        num_clients: N (scores and rounds are kept for client ids ``0..N-1``).
        held: The clients whose parameters are kept, one per row of the parameter matrices passed
            in (default: all N, row = client id; a host holding one client passes ``[client]``).
    """

    def __init__(self, num_clients: int, held: list[int] | None = None) -> None:
        self.held = list(range(num_clients)) if held is None else list(held)
        self.best_scores = torch.full((num_clients,), float("-inf"), dtype=torch.float64)
        self.best_rounds = torch.full((num_clients,), -1, dtype=torch.long)
        self.best_parameters: torch.Tensor | None = None
        self.best_round = -1
        self.best_overall = float("-inf")

    def update(
        self,
        round_index: int,
        scores: torch.Tensor,
        users: torch.Tensor,
        parameters: torch.Tensor,
        overall: float,
    ) -> None:
        """Take round ``round_index``'s validation into account.

        Args:
            round_index: The round whose parameters were evaluated.
            scores: Each client's mean validation score ``(N,)``.
            users: Each client's validation users ``(N,)`` (a client without any keeps its
                selection).
            parameters: The held clients' evaluated parameters ``(len(held), P)``.
            overall: The overall validation score (over all users).
        """
        if self.best_parameters is None:
            self.best_parameters = parameters.clone()
        better = (users > 0) & (scores.double() > self.best_scores)
        self.best_scores[better] = scores.double()[better]
        self.best_rounds[better] = round_index
        rows = torch.tensor([bool(better[c]) for c in self.held], dtype=torch.bool)
        self.best_parameters[rows] = parameters[rows].to(self.best_parameters.dtype)
        if overall > self.best_overall:
            self.best_overall = float(overall)
            self.best_round = round_index

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors (for checkpoints)."""
        return {
            "best_scores": self.best_scores,
            "best_rounds": self.best_rounds,
            "best_adapters": self.best_parameters,
            "best_round": self.best_round,
            "best_overall": self.best_overall,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], held: list[int]) -> ModelSelection:
        """Rebuild the selection :meth:`state_dict` saved."""
        selection = cls(len(state["best_scores"]), held)
        selection.best_scores = state["best_scores"]
        selection.best_rounds = state["best_rounds"]
        selection.best_parameters = state["best_adapters"]
        selection.best_round = int(state["best_round"])
        selection.best_overall = float(state["best_overall"])
        return selection
