"""Which examples each client trains on, in which order, in one round (pure, seeded).

A round visits clients one after another (client-major order). Each client runs ``local_epochs``
passes over its own shuffled examples in mini-batches; ``accumulate`` consecutive mini-batches of a
client form one optimizer step. A client's batches depend only on ``(seed, round, client)`` and its
own number of examples (each client draws from its own generator), so a silo plans its batches
alone and gets exactly those the simulation gives it, and a resumed run replays exactly the round it
was interrupted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlannedBatch:
    """One mini-batch of one client.

    Attributes:
        client: The client (adapter) this batch trains.
        indices: Example indices of the whole (global) mini-batch.
        step_examples: Examples in the optimizer step this batch belongs to (for exact loss
            normalization under gradient accumulation and data parallelism).
        step_end: Whether the optimizer steps after this batch.
        client_start: Whether this is the client's first batch in the round.
    """

    client: int
    indices: np.ndarray
    step_examples: int
    step_end: bool
    client_start: bool


def plan_round(
    example_clients: np.ndarray,
    num_clients: int,
    batch_size: int,
    local_epochs: int,
    accumulate: int,
    seed: int,
    round_index: int,
    pooled: bool = False,
    clients: Sequence[int] | None = None,
) -> list[PlannedBatch]:
    """Plan one round of local training.

    Args:
        example_clients: Client of every training example ``(E,)``.
        num_clients: N (clients with no example get no batch).
        batch_size: Examples per mini-batch.
        local_epochs: Passes over each client's examples.
        accumulate: Mini-batches per optimizer step.
        seed: Run seed.
        round_index: Round counted from 0.
        pooled: Train all examples as one client (client 0), for the centralized baseline.
        clients: Plan only these clients (a silo plans its own); ``None``: all.

    Returns:
        The mini-batches in training order.
    """
    if batch_size < 1 or local_epochs < 1 or accumulate < 1:
        raise ValueError("batch_size, local_epochs and accumulate must all be >= 1")
    if pooled:
        # The pooled (centralized) plan keeps its historical generator: one client, all examples.
        size = len(example_clients) if clients is None or 0 in clients else 0
        groups = [(0, np.arange(size), np.random.default_rng([seed, round_index]))]
    else:
        # One generator per client: its order must not depend on the other clients' sizes.
        planned = range(num_clients) if clients is None else clients
        groups = [
            (c, np.flatnonzero(example_clients == c), np.random.default_rng([seed, round_index, c]))
            for c in planned
        ]
    plan: list[PlannedBatch] = []
    for client, members, rng in groups:
        if len(members) == 0:
            continue
        # Shuffle positions, not example indices: a silo's local positions are the same numbers.
        chunks = [
            order[start : start + batch_size]
            for _ in range(local_epochs)
            for order in [members[rng.permutation(len(members))]]
            for start in range(0, len(order), batch_size)
        ]
        for step_start in range(0, len(chunks), accumulate):
            step = chunks[step_start : step_start + accumulate]
            step_examples = sum(len(chunk) for chunk in step)
            for position, chunk in enumerate(step):
                plan.append(
                    PlannedBatch(
                        client=client,
                        indices=chunk,
                        step_examples=step_examples,
                        step_end=position == len(step) - 1,
                        client_start=step_start == 0 and position == 0,
                    )
                )
    return plan


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The rows of a global batch that process ``rank`` of ``world_size`` handles."""
    return indices[rank::world_size]


def user_sampled_steps(users: int, expected_users: int, local_epochs: int) -> int:
    """Steps of a user-sampled round: ``local_epochs`` passes of ``users / expected_users``."""
    return local_epochs * max(1, -(-users // expected_users))


def plan_user_sampled_round(
    example_users: np.ndarray,
    example_clients: np.ndarray,
    num_clients: int,
    expected_users: int,
    windows_per_user: int,
    local_epochs: int,
    seed: int,
    round_index: int,
    pooled: bool = False,
    clients: Sequence[int] | None = None,
) -> list[PlannedBatch]:
    """Plan one round of user-level DP-SGD: every step Poisson-samples each client's users.

    Each step is one batch: every user of the client joins it independently with probability
    ``q = min(1, expected_users / users)`` and brings at most ``windows_per_user`` of its training
    windows (drawn without replacement). A step may be empty (it still adds noise). A client's
    draws depend only on ``(seed, round, client)`` and its own examples, as in :func:`plan_round`.

    Args:
        example_users: User of every training example ``(E,)``.
        example_clients: Client of every training example ``(E,)``.
        num_clients: N.
        expected_users: Users per step on average.
        windows_per_user: Windows a sampled user brings at most.
        local_epochs: Passes (of ``users / expected_users`` steps each).
        seed: Run seed.
        round_index: Round counted from 0.
        pooled: All examples as one client (client 0), for the centralized baseline.
        clients: Plan only these clients; ``None``: all.

    Returns:
        The steps, one batch each, client after client.
    """
    if expected_users < 1 or windows_per_user < 1 or local_epochs < 1:
        raise ValueError("expected_users, windows_per_user and local_epochs must all be >= 1")
    owners = np.zeros_like(example_clients) if pooled else example_clients
    planned = ([0] if pooled else range(num_clients)) if clients is None else clients
    plan: list[PlannedBatch] = []
    for client in planned:
        members = np.flatnonzero(owners == client)
        if len(members) == 0:
            continue
        # The client's windows grouped by user (stable order: positions, not global ids).
        order = members[np.argsort(example_users[members], kind="stable")]
        users, starts = np.unique(example_users[order], return_index=True)
        groups = np.split(order, starts[1:])
        rate = min(1.0, expected_users / len(users))
        rng = np.random.default_rng([seed, round_index, client, 0xD95])
        steps = user_sampled_steps(len(users), expected_users, local_epochs)
        for step in range(steps):
            chosen = np.flatnonzero(rng.random(len(users)) < rate)
            parts = [
                groups[u]
                if len(groups[u]) <= windows_per_user
                else rng.choice(groups[u], size=windows_per_user, replace=False)
                for u in chosen
            ]
            indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            plan.append(
                PlannedBatch(
                    client=client,
                    indices=indices.astype(np.int64),
                    step_examples=len(indices),
                    step_end=True,
                    client_start=step == 0,
                )
            )
    return plan
