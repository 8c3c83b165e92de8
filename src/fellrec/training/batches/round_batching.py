"""How the data module batches a round: the three things it learns from the rest of a run.

The data module plans batches from its own settings (``data:``), except for three facts that
other parts of a run decide:

- the strategy: a centralized one pools every client's examples into one (the round loop knows);
- the model: user-level DP-SGD Poisson-samples users per step, from a seed the server does not
  know (the model holds the DP settings and the secret);
- a deployed client, fitted afresh for every round it is sent, trains that round (its session
  knows the round; a simulation's round is the trainer's epoch).

They travel as one frozen :class:`RoundBatching` value, valid by construction, set with
:meth:`FederatedDataModule.set_round_batching
<fellrec.training.batches.datamodule.FederatedDataModule.set_round_batching>`; each party
changes only its own field (``dataclasses.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserSampling:
    """User-level DP-SGD's sampling: every step Poisson-samples each client's users.

    Attributes:
        expected_users: Users per step on average (``model.dp_sgd.expected_users``).
        windows_per_user: Training windows a sampled user brings at most.
        secret: The seed of the draws, which the server does not know (left out of the repr).
    """

    expected_users: int
    windows_per_user: int
    secret: int = field(repr=False)

    def __post_init__(self) -> None:
        if self.expected_users < 1 or self.windows_per_user < 1:
            raise ValueError(
                "user sampling needs expected_users >= 1 and windows_per_user >= 1, got "
                f"{self.expected_users} and {self.windows_per_user}"
            )


@dataclass(frozen=True)
class RoundBatching:
    """How a round's training examples are batched, beyond the data module's own settings.

    Attributes:
        pooled: Train every client's examples as one client (client 0): the strategy is
            centralized (``Strategy.pools_clients``).
        user_sampling: Poisson-sample users per step (user-level DP-SGD); ``None``: fixed-size
            batches over shuffled examples.
        round: The round the training loader serves; ``None``: the trainer's current epoch (one
            Lightning epoch per round). A deployed client, fitted afresh for every round it is
            sent, sets it.
    """

    pooled: bool = False
    user_sampling: UserSampling | None = None
    round: int | None = None

    def __post_init__(self) -> None:
        if self.round is not None and self.round < 0:
            raise ValueError(f"the round to batch must be >= 0, got {self.round}")
