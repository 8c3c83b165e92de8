"""User-level DP-SGD on a host: its secret, each step's per-user draws, and its privacy ledger.

:mod:`fellrec.training.dp.dp_sgd` holds the settings, the clipping and the accountant;
this module holds what a host that trains under DP-SGD keeps between steps and rounds, and runs
one DP step. :class:`~fellrec.training.host.federated_module.FederatedModule` only hands it the
batch, the loss of a user's rows and its backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fellrec.training.dp.dp_sgd import (
    DPSGDSettings,
    UserGradientSum,
    dp_user_popularity,
    epsilon_spent,
)

#: One round's accounting of a client: (noise multiplier per step, sample rate, steps).
RoundAccount = tuple[float, float, int]


@dataclass
class PrivacyLedger:
    """What each client released under DP, round by round: the accountant's history.

    The settings of a round are recorded when it starts, so a run resumed with other
    ``model.dp_sgd`` settings accounts each round with the settings it ran under (kept in the
    checkpoint). A round is recorded per parameters it started from: replayed from the same
    parameters it draws the same noise and releases nothing new (one entry), from other
    parameters it is a second release (a second entry). A round missing from the ledger (a
    deployed node restarted without it) is counted once, at the current settings.

    Attributes:
        releases: Noise multipliers of the one-off releases of each client's data (the DP
            popularity start), made once when the run started.
        rounds: By client, by round, by digest of the round-start parameters: the round's
            :data:`RoundAccount`.
    """

    releases: list[float] = field(default_factory=list)
    rounds: dict[int, dict[int, dict[int, RoundAccount]]] = field(default_factory=dict)

    def record(self, client: int, round_index: int, start: int, account: RoundAccount) -> None:
        """Record one client's round started from parameters of digest ``start``."""
        self.rounds.setdefault(client, {}).setdefault(round_index, {})[start] = account

    def history(self, client: int, rounds: int, current: RoundAccount) -> list[RoundAccount]:
        """The accountant's history of ``client`` over rounds ``0 .. rounds - 1``.

        Consecutive entries with the same settings are merged into one (the accountant
        composes them the same way, faster).
        """
        recorded = self.rounds.get(client, {})
        history: list[RoundAccount] = []
        for round_index in range(rounds):
            for sigma, rate, steps in list(recorded.get(round_index, {}).values()) or [current]:
                if history and history[-1][:2] == (sigma, rate):
                    history[-1] = (sigma, rate, history[-1][2] + steps)
                else:
                    history.append((sigma, rate, steps))
        return history

    def state(self) -> dict[str, Any]:
        """The ledger as plain values (for a checkpoint)."""
        rounds = [
            [client, round_index, start, *account]
            for client, by_round in self.rounds.items()
            for round_index, by_start in by_round.items()
            for start, account in by_start.items()
        ]
        return {"releases": list(self.releases), "rounds": rounds}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PrivacyLedger:
        """The ledger :meth:`state` wrote."""
        ledger = cls([float(s) for s in state["releases"]])
        for client, round_index, start, sigma, rate, steps in state["rounds"]:
            account = (float(sigma), float(rate), int(steps))
            ledger.record(int(client), int(round_index), int(start), account)
        return ledger


@dataclass
class DPStepOutcome:
    """What one DP step reports to the round's tallies (released values only).

    Attributes:
        loss_sum: The noised sum of the sampled users' clipped mean losses.
        examples: The expected number of users of a step (data-independent).
        diverged: Whether a user's loss or gradient was not finite (the step is then skipped).
        trained: Whether any user was sampled (the transport carried a step).
    """

    loss_sum: float
    examples: float
    diverged: bool
    trained: bool


class UserLevelDPSGD:
    """A host's user-level DP-SGD: sampling secret, per-step draws, steps and ledger.

    Args:
        settings: ``model.dp_sgd``.
        users: Each held client's number of training users (its sample rate and delta).
        secret: The base of the sampling and the noise, kept from the server.
    """

    def __init__(self, settings: DPSGDSettings, users: Mapping[int, int], secret: int) -> None:
        self.settings = settings
        self.users = dict(users)
        self.secret = secret
        self.round_index = 0
        self.ledger = PrivacyLedger(
            [] if settings.popularity_noise is None else [settings.popularity_noise]
        )
        self._steps: dict[int, int] = {}
        self._digests: dict[int, int] = {}

    def round_account(self, client: int, local_epochs: int) -> RoundAccount:
        """The current settings' accounting of one full round of ``client``."""
        users = self.users[client]
        return (
            self.settings.step_noise_multiplier,
            self.settings.sample_rate(users),
            self.settings.steps_per_round(users, local_epochs),
        )

    def start_round(
        self, round_index: int, requests: Sequence[int], clients: Iterable[int], local_epochs: int
    ) -> None:
        """Start a round: keep each slot's request digest, record the round's settings.

        Args:
            round_index: The round.
            requests: Each slot's digest of what it was asked (its round-start parameters and
                round config: :func:`~fellrec.training.dp.host_secrets.request_digests`), in slot
                order: a silo alone digests what it was sent.
            clients: The client of each slot, in slot order.
            local_epochs: Epochs over its data a client takes per round.
        """
        self.round_index = round_index
        self._steps = {}
        self._digests = dict(enumerate(requests))
        for slot, client in enumerate(clients):
            # Counted whether the client trains this round or not: an upper bound.
            account = self.round_account(client, local_epochs)
            self.ledger.record(client, round_index, self._digests[slot], account)

    def seed(self, slot: int, *parts: int) -> int:
        """A torch seed from the secret, the slot's round-start parameters and ``parts``.

        The round-start digest makes a repeated request with other parameters draw other noise
        (the difference of two answers would otherwise cancel it).
        """
        entropy = [self.secret, self._digests.get(slot, 0), *parts]
        state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
        return int(state[0] >> np.uint64(1))

    def popularity_start(
        self, slot: int, client: int, user_items: list[np.ndarray], num_items: int
    ) -> torch.Tensor:
        """``client``'s item counts released under user-level DP (the biases' start) ``(I,)``."""
        assert self.settings.popularity_noise is not None
        generator = torch.Generator().manual_seed(self.seed(slot, 7_919, client))
        return dp_user_popularity(
            user_items,
            num_items,
            self.settings.popularity_items,
            self.settings.popularity_noise,
            generator,
        )

    def step(
        self,
        slot: int,
        client: int,
        users: torch.Tensor,
        user_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        backward: Callable[[torch.Tensor], None],
        params: list[torch.nn.Parameter],
    ) -> DPStepOutcome:
        """One step: each sampled user's gradient clipped, summed, noised into ``.grad``.

        Each sampled user's windows give its mean loss, whose gradient over every parameter the
        client steps is clipped to ``max_grad_norm``; the noised sum over the expected number of
        users is left in the parameters' ``.grad`` for the optimizer. The loss is released the
        same way (each user's mean loss clipped to ``max_loss``, summed, noised), so the
        strategy's heating reads no raw loss. Every random draw of a user (dropout, sampled
        negatives) and the noise come from the secret, the parameters the client was sent, the
        round, the step and the user: one user changes nothing another user draws.

        Args:
            slot: The client's slot on this host.
            client: The client.
            users: The user of each row of the step's batch ``(b,)`` (empty: nobody sampled).
            user_loss: The per-row losses of the given rows, drawing from the given generator.
            backward: Backpropagates a scalar loss (into the parameters' ``.grad``).
            params: The parameters the client steps.

        Returns:
            What the round's tallies may read.
        """
        settings = self.settings
        step = self._steps.get(slot, 0)
        self._steps[slot] = step + 1
        total = UserGradientSum(params, settings)
        loss_total = 0.0
        diverged = False
        for user in torch.unique(users).tolist():
            rows = (users == user).nonzero().flatten()
            draws = self.seed(slot, self.round_index, client, step, 1, int(user))
            torch.manual_seed(draws)
            loss = user_loss(rows, torch.Generator().manual_seed(draws ^ 0x5A5A5A5A)).mean()
            if not bool(torch.isfinite(loss.detach())):
                diverged = True
                break
            backward(loss)
            if not math.isfinite(total.add_user()):
                diverged = True
                break
            loss_total += min(max(float(loss.detach()), 0.0), settings.max_loss)
        count = self.users[client]
        expected = settings.sample_rate(count) * count
        noise = torch.Generator().manual_seed(self.seed(slot, self.round_index, client, step, 0, 0))
        total.release(expected, noise)
        # What the strategy reads: the noised sum of clipped user losses, over the expected
        # number of users (data-independent), never a raw loss or count.
        loss_noise = float(torch.randn(1, generator=noise, dtype=torch.float64))
        released_loss = loss_total + loss_noise * settings.loss_noise * settings.max_loss
        return DPStepOutcome(released_loss, expected, diverged, users.numel() > 0)

    def privacy_spent(self, num_clients: int, local_epochs: int) -> torch.Tensor:
        """Each client's ``(epsilon, delta)`` after this round ``(num_clients, 2)``.

        NaN for clients this host does not hold. An upper bound: a client is counted with a
        full round of steps in every round so far, as if it trained in each.
        """
        spent = torch.full((num_clients, 2), float("nan"), dtype=torch.float64)
        for client, users in self.users.items():
            delta = self.settings.client_delta(users)
            current = self.round_account(client, local_epochs)
            # Every round asked so far, also when a later one was asked before an earlier one.
            rounds = max([self.round_index, *self.ledger.rounds.get(client, {})]) + 1
            history = self.ledger.history(client, rounds, current)
            spent[client, 0] = epsilon_spent(history, delta, self.ledger.releases)
            spent[client, 1] = delta
        return spent

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the secret and the ledger."""
        return {"secret": self.secret, "ledger": self.ledger.state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Resume as the interrupted run: its secret and the rounds it accounted."""
        self.secret = int(state["secret"])
        if "ledger" in state:
            self.ledger = PrivacyLedger.from_state(state["ledger"])
