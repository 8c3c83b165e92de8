"""The round protocol: what a strategy is told and what it answers, as plain values (pure).

Simulation (:class:`fellrec.training.rounds.loop.FederatedLoop`) and deployment (the Flower
ServerApp in :mod:`fellrec.deploy.server_app`) drive a strategy through the same two calls, as
Flower's ``configure_train`` / ``aggregate_train`` do:

- ``configure_round(round, num_clients, lr_scale) -> RoundConfig``: per client the learning-rate
  scale, the proximal weight and whether it trains;
- ``aggregate(RoundInputs) -> RoundResult``: every client's parameters for the next round.

Rows of every ``(N, ...)`` tensor are client ids ``0..N-1``: one index space on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClientRoundConfig:
    """One client's part of a :class:`RoundConfig` (what a deployed client is sent).

    Attributes:
        round: The round about to start, counted from 0.
        lr_scale: Multiplier of the client's base learning rates.
        proximal_mu: Weight of the proximal term ``mu/2 ||theta - theta_start||^2`` (0: none).
        trains: Whether the client trains this round.
    """

    round: int
    lr_scale: float
    proximal_mu: float
    trains: bool = True


@dataclass(frozen=True)
class RoundConfig:
    """How every client trains in one round.

    Attributes:
        round: The round about to start, counted from 0.
        lr_scale: Per-client multiplier of the base learning rates ``(N,)``.
        proximal_mu: Weight of FedProx's proximal term, the same for every client (0: none).
        trains: ``(N,)`` bool; clients that train this round.
    """

    round: int
    lr_scale: torch.Tensor
    proximal_mu: float
    trains: torch.Tensor

    @property
    def num_clients(self) -> int:
        """N."""
        return int(self.lr_scale.shape[0])

    def for_client(self, client: int) -> ClientRoundConfig:
        """The part of this config that client ``client`` is sent."""
        return ClientRoundConfig(
            round=self.round,
            lr_scale=float(self.lr_scale[client]),
            proximal_mu=self.proximal_mu,
            trains=bool(self.trains[client]),
        )


@dataclass(frozen=True)
class RoundInputs:
    """What the clients report after local training in one round.

    Attributes:
        round: The round that just ended, counted from 0.
        parameters: Every client's parameters after local training ``(N, P)`` (a client that did
            not take part holds its round-start parameters).
        losses: Mean local training loss of each client ``(N,)`` (undefined for
            non-participants).
        examples: Training examples of each client in the round ``(N,)``.
        participants: ``(N,)`` bool; clients that trained, reported and stayed finite. The others
            keep their parameters and do not influence anyone.
    """

    round: int
    parameters: torch.Tensor
    losses: torch.Tensor
    examples: torch.Tensor
    participants: torch.Tensor


@dataclass
class RoundResult:
    """What a strategy decides at a round boundary.

    Attributes:
        theta: Each client's parameters for the next round ``(N, P)``.
        lr_scale: Multiplier of the base learning rate for each client's next round ``(N,)``.
        similarity: The client similarity matrix used ``(N, N)``, if the strategy has one.
        weights: The heating (learning-speed) weights ``(N,)``, if the strategy has them.
    """

    theta: torch.Tensor
    lr_scale: torch.Tensor
    similarity: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def round_inputs(
    round_index: int,
    parameters: torch.Tensor,
    round_start: torch.Tensor,
    loss_sums: torch.Tensor,
    examples: torch.Tensor,
    diverged: torch.Tensor,
) -> RoundInputs:
    """Turn the clients' reports into a strategy's inputs.

    A client whose loss became NaN/inf goes back to its round-start parameters and, like a client
    without examples (or without a report), does not take part.

    Args:
        round_index: The round that just ended.
        parameters: Parameters after local training ``(N, P)``.
        round_start: Parameters the clients started the round with ``(N, P)``.
        loss_sums: Summed training loss of each client ``(N,)``.
        examples: Training examples of each client ``(N,)`` (0: did not train or report).
        diverged: ``(N,)`` bool; clients whose loss became NaN/inf.

    Returns:
        The :class:`RoundInputs` (mean losses, participation, reset parameters).
    """
    if bool(diverged.any()):
        # Copy only then: at LLaMA scale (N, P) is gigabytes, and usually nobody diverged.
        parameters = parameters.clone()
        parameters[diverged] = round_start[diverged]
    return RoundInputs(
        round=round_index,
        parameters=parameters,
        losses=(loss_sums / examples.clamp_min(1)).float(),
        examples=examples,
        participants=(examples > 0) & ~diverged,
    )


def round_record(round_index: int, inputs: RoundInputs, result: RoundResult, lr: float) -> dict:
    """A round's entry of a run's history, as plain values.

    Args:
        round_index: The round that just ended.
        inputs: What the strategy was given.
        result: What it answered.
        lr: The base learning rate (the record holds each client's next-round learning rate).

    Returns:
        ``round``, ``train_loss`` (None for non-participants), ``lr`` and, where the strategy has
        them, ``heating_weight`` and ``similarity``.
    """
    record: dict = {
        "round": round_index,
        "train_loss": [
            float(loss) if taking_part else None
            for loss, taking_part in zip(inputs.losses, inputs.participants, strict=True)
        ],
        "lr": [lr * float(scale) for scale in result.lr_scale],
    }
    if result.weights is not None:
        record["heating_weight"] = [float(w) for w in result.weights]
    if result.similarity is not None:
        record["similarity"] = result.similarity.tolist()
    return record
