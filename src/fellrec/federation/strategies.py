"""Federated strategies: thin classes over the pure aggregation functions.

A strategy speaks the round protocol of :mod:`fellrec.federation.protocol`. Before a round,
``configure_round`` says how each client trains (learning-rate scale, proximal weight, whether it
trains); after it, ``aggregate`` answers: given every client's parameters after local training (an
``(N, P)`` matrix), its mean training loss and its data size, what does each client start the next
round with, and how fast should it learn? Strategies hold settings only, no state, so a run resumes
from the caller's checkpointed state alone, and the same strategy runs in simulation and in a
deployment.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fellrec.federation.aggregation import (
    adapter_similarity,
    fedavg,
    heating_weights,
    loss_distribution,
    personalized_aggregate,
    uniform_similarity,
)
from fellrec.federation.protocol import RoundConfig, RoundInputs, RoundResult

__all__ = [
    "STRATEGIES",
    "Centralized",
    "FELLRec",
    "FedAvg",
    "FedProx",
    "Local",
    "RoundResult",
    "Strategy",
    "strategy_from_name",
]


class Strategy:
    """Base class: every client keeps its own adapter (override :meth:`aggregate`)."""

    name: ClassVar[str] = "base"
    #: Train all users as one client (centralized baseline).
    pools_clients: ClassVar[bool] = False
    #: One shared model for all clients (the adapters are equal after each round).
    shares_model: ClassVar[bool] = False

    @property
    def proximal_mu(self) -> float:
        """Weight of FedProx's proximal term in the local loss (0 disables it)."""
        return 0.0

    def configure_round(
        self, round_index: int, num_clients: int, lr_scale: torch.Tensor | None = None
    ) -> RoundConfig:
        """How each client trains in round ``round_index``.

        Args:
            round_index: The round about to start, counted from 0.
            num_clients: N.
            lr_scale: The learning-rate scales the previous :meth:`aggregate` returned
                (``None`` before the first round: 1 for everyone).

        Returns:
            Every client trains, at its scaled learning rate, with this strategy's proximal weight.
        """
        scale = torch.ones(num_clients, dtype=torch.float64) if lr_scale is None else lr_scale
        if len(scale) != num_clients:
            raise ValueError(f"{len(scale)} learning-rate scales for {num_clients} clients")
        return RoundConfig(
            round=round_index,
            lr_scale=scale.double(),
            proximal_mu=self.proximal_mu,
            trains=torch.ones(num_clients, dtype=torch.bool),
        )

    def aggregate(self, inputs: RoundInputs) -> RoundResult:
        """Combine the clients' parameters after round ``inputs.round``.

        Args:
            inputs: Parameters after local training ``(N, P)``, mean losses, example counts and
                participation (see :class:`~fellrec.federation.protocol.RoundInputs`).

        Returns:
            The next round's parameters and learning-rate scales.
        """
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        """The constructor arguments (plain values)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> dict[str, object]:
        """Settings for logs and ``results.json``."""
        return {"name": self.name, **self.settings()}

    def class_spec(self) -> dict[str, object]:
        """A jsonargparse ``class_path``/``init_args`` spec that rebuilds this strategy."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.settings()}


def _ones(theta: torch.Tensor) -> torch.Tensor:
    return torch.ones(theta.shape[0], dtype=theta.dtype, device=theta.device)


class Local(Strategy):
    """No aggregation: each client trains alone (the local-only baseline)."""

    name = "local"

    def aggregate(self, inputs: RoundInputs) -> RoundResult:
        """Return the parameters unchanged."""
        return RoundResult(theta=inputs.parameters.clone(), lr_scale=_ones(inputs.parameters))


class FedAvg(Strategy):
    """One shared model: the size-weighted mean of the participants, sent to every client."""

    name = "fedavg"
    shares_model = True

    def aggregate(self, inputs: RoundInputs) -> RoundResult:
        """Average the participants' parameters weighted by their training examples."""
        theta, participants, sizes = inputs.parameters, inputs.participants, inputs.examples
        if not bool(participants.any()):
            return RoundResult(theta=theta.clone(), lr_scale=_ones(theta))
        mean = fedavg(theta[participants], sizes[participants].to(theta.dtype))  # (P,)
        return RoundResult(theta=mean.expand_as(theta).clone(), lr_scale=_ones(theta))


class FedProx(FedAvg):
    """FedAvg with a proximal term ``mu/2 * ||theta - theta_round_start||^2`` in the local loss.

    Args:
        mu: Weight of the proximal term (> 0). The default, 0.001, is the smallest of the FedProx
            paper's grid (0.001, 0.01, 0.1, 1), selected on validation: on MovieLens-100K with
            the recipe it beat 0.01 on every seed (README, "What the language model buys"); the
            per-item rows of a client train sparsely, and a stronger pull holds them back.
    """

    name = "fedprox"

    def __init__(self, mu: float = 0.001) -> None:
        if mu <= 0:
            raise ValueError(f"loop.strategy.mu must be > 0 for fedprox, got {mu}")
        self.mu = mu

    @property
    def proximal_mu(self) -> float:
        """The configured ``mu``."""
        return self.mu


class Centralized(Strategy):
    """All users' data trains one model (the centralized upper baseline; no federation)."""

    name = "centralized"
    pools_clients = True
    shares_model = True

    def aggregate(self, inputs: RoundInputs) -> RoundResult:
        """Copy the single trained adapter (client 0's slot) to every client for evaluation."""
        theta = inputs.parameters
        return RoundResult(theta=theta[0].expand_as(theta).clone(), lr_scale=_ones(theta))


class FELLRec(Strategy):
    """FELLRec's dynamic balance: attention-based personalized aggregation plus curriculum heating.

    Args:
        alpha: Heating scale (> 0); larger means faster warm-up.
        beta: Heating exponent offset (> 0): the exponent is ``t + 1/beta`` (``code``) or
            ``(t + 1)/beta`` (``scaled``).
        temperature: Softmax temperature turning losses into a distribution.
        exponent: ``"code"`` (the reference implementation) or ``"scaled"``.
        order: ``"jacobi"`` (all clients mix the same snapshot) or ``"sequential"`` (the reference
            code's in-place update).
        attention: Use adapter similarity (False: uniform similarity, an ablation).
        heating: Use the heating weights (False: w = 1, an ablation).
        lr_heating: Scale each client's next-round learning rate by its heating weight.
        size_weighted: Weight what a client takes from each other client by that client's
            training examples (a_ij = S_ij w_i n_j, a_ii = n_i), so that with S = w = 1 the mix is
            FedAvg's; False is the paper's unweighted mix (a_ij = S_ij w_i, a_ii = 1), where a
            client with 10x the data counts as much as any other (measured on MovieLens-100K's
            k-means clients, one of which holds 70% of the data, in benchmarks/README.md).
    """

    name = "fellrec"

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 5.0,
        temperature: float = 0.05,
        exponent: str = "code",
        order: str = "jacobi",
        attention: bool = True,
        heating: bool = True,
        lr_heating: bool = True,
        size_weighted: bool = True,
    ) -> None:
        if alpha <= 0:
            raise ValueError(f"loop.strategy.alpha must be > 0, got {alpha}")
        if beta <= 0:
            raise ValueError(f"loop.strategy.beta must be > 0, got {beta}")
        if temperature <= 0:
            raise ValueError(f"loop.strategy.temperature must be > 0, got {temperature}")
        if exponent not in ("code", "scaled"):
            raise ValueError(f"loop.strategy.exponent must be 'code' or 'scaled', got {exponent!r}")
        if order not in ("jacobi", "sequential"):
            raise ValueError(f"loop.strategy.order must be 'jacobi' or 'sequential', got {order!r}")
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.exponent = exponent
        self.order = order
        self.attention = attention
        self.heating = heating
        self.lr_heating = lr_heating
        self.size_weighted = size_weighted

    def aggregate(self, inputs: RoundInputs) -> RoundResult:
        """Personalized aggregation among the participants; the others keep their adapters."""
        theta, losses, sizes = inputs.parameters, inputs.losses, inputs.examples
        index = inputs.participants.nonzero().flatten()
        result = theta.clone()
        lr_scale = _ones(theta)
        n = theta.shape[0]
        full_similarity = torch.full((n, n), float("nan"), device=theta.device)
        full_weights = torch.full((n,), float("nan"), device=theta.device)
        if index.numel() == 0:
            return RoundResult(result, lr_scale, full_similarity, full_weights)
        sub = theta[index]  # (M, P)
        similarity = adapter_similarity(sub) if self.attention else uniform_similarity(len(index))
        if self.heating:
            p = loss_distribution(losses[index].float(), self.temperature)
            weights = heating_weights(p, inputs.round, self.alpha, self.beta, self.exponent)
        else:
            weights = torch.ones(len(index), device=theta.device)
        # `sub` is already a copy (advanced indexing), so mixing in place saves a full allocation.
        result[index] = personalized_aggregate(
            sub,
            similarity,
            weights,
            order=self.order,
            inplace=True,
            sizes=sizes[index] if self.size_weighted else None,
        )
        if self.lr_heating:
            lr_scale[index] = weights.to(lr_scale.dtype)
        full_similarity[index.unsqueeze(1), index.unsqueeze(0)] = similarity.float()
        full_weights[index] = weights.float()
        return RoundResult(result, lr_scale, full_similarity, full_weights)


#: Strategy names accepted on the command line (``fellrec compare --strategies``).
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FELLRec, FedAvg, FedProx, Local, Centralized)
}


def strategy_from_name(name: str) -> Strategy:
    """Instantiate a strategy with default settings from its name.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
