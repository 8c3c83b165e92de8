"""Model selection of the baselines: keep the best validation weights, stop when it stalls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BestOnValidation:
    """Tracks the best validation value of a model being trained and its weights.

    Attributes:
        patience: Validations without improvement before :meth:`update` says stop.
        best: The best value so far.
        best_epoch: The epoch it was reached (0-based; -1 before any validation).
        curve: Every validation as ``{"epoch", "validation"}``.
    """

    patience: int
    best: float = float("-inf")
    best_epoch: int = -1
    curve: list[dict[str, float]] = field(default_factory=list)
    _state: dict[str, torch.Tensor] | None = None
    _stale: int = 0

    def update(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record a validation; keep the weights when it is the best. Returns whether to stop."""
        self.curve.append({"epoch": epoch, "validation": value})
        if value > self.best:
            self.best, self.best_epoch, self._stale = value, epoch, 0
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self._stale += 1
        return self._stale >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model``.

        Raises:
            ValueError: If no validation ran.
        """
        if self._state is None:
            raise ValueError("no validation ran, so there are no best weights")
        model.load_state_dict(self._state)

    def record(self, epochs_run: int) -> dict[str, object]:
        """The training record: ``epochs_run``, ``best_epoch``, ``best_validation``, the curve."""
        return {
            "epochs_run": epochs_run,
            "best_epoch": self.best_epoch,
            "best_validation": self.best,
            "validation": self.curve,
        }


def due(epoch: int, every: int, last: int) -> bool:
    """Whether epoch ``epoch`` (0-based) validates: every ``every`` epochs and the last one."""
    return (epoch + 1) % every == 0 or epoch + 1 == last
