"""The batches the data module serves: one client's rows, with what the model needs to weigh them.

Under data parallelism every process runs the model on every global batch (sharded blocks hang
when one process skips a collective), so a process without rows of a batch is given one row
that weighs nothing. The data module says how much each batch weighs (``loss_scale``,
``examples``, ``counted``); the model multiplies and counts, and never needs to know why a
batch weighs nothing.

The dataclasses are not frozen: Lightning moves a batch to the device by copying it and
setting each field to its moved value (``lightning_utilities.apply_to_collection``). They compare
by identity (``eq=False``): tensors have no single truth value, and Python 3.13's dataclass
equality compares field by field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)
class TrainBatch:
    """This process's rows of one planned training batch of one client.

    Attributes:
        client: The client whose examples these are (its adapter trains on them).
        round: The round the batch belongs to (0-based); seeds the client's dropout and negatives.
        histories: Item indices of each example's history, int64 ``(b, H)``, right-aligned (the
            last column is the most recent item) and left-padded with ``-1``.
        targets: The next item of each example, int64 ``(b,)``.
        users: The user of each example, int64 ``(b,)`` (DP-SGD clips per user).
        loss_scale: What the sum of the batch's per-example losses is multiplied by before the
            backward pass: ``world_size / step_examples`` (the gradient averaged over the
            optimizer step's global examples, once the processes' gradients are averaged), or 0
            for rows that weigh nothing.
        examples: How many rows count as examples in the round's loss and example tallies:
            ``b``, or 0 for rows that only keep the processes in step.
        client_start: The first batch of the client in the round (its noise is seeded here).
        step_end: The last batch of an optimizer step (the step is taken after it).
    """

    client: int
    round: int
    histories: torch.Tensor
    targets: torch.Tensor
    users: torch.Tensor
    loss_scale: float
    examples: int
    client_start: bool
    step_end: bool


@dataclass(eq=False)
class EvalBatch:
    """This process's rows of one batch of one client's validation or test users.

    Attributes:
        client: The client the users belong to (its adapter scores them).
        users: User indices, int64 ``(b,)``.
        histories: Item indices of each user's last ``H`` items before the period, int64
            ``(b, H)``, right-aligned and left-padded with ``-1``.
        targets: Each user's target items, int64 ``(b, T)``, right-padded with ``-1``.
        consumed: Items each user consumed before the period (excluded from the ranking),
            int64 ``(b, C)``, right-padded with ``-1``.
        counted: Whether the rows count in the metrics; ``False`` for rows that only keep the
            processes in step (they are scored, and the scores dropped).
    """

    client: int
    users: torch.Tensor
    histories: torch.Tensor
    targets: torch.Tensor
    consumed: torch.Tensor
    counted: bool
