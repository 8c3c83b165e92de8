"""The checks of how the data is served (batch sizes, passes, the silo's client), light on purpose.

``FederatedDataModule`` runs them when it is built, and the checks before a run's heavy imports
(:mod:`fellrec.preflight`) run the same function on the config, so a bad value fails in seconds
with the same message.
"""

from __future__ import annotations


def check_loader_settings(
    batch_size: int,
    eval_batch_size: int,
    local_epochs: int,
    accumulate_grad_batches: int,
    client: int | None,
    num_clients: int,
) -> None:
    """Raise a ValueError naming the first ``data.*`` serving setting out of range.

    Args:
        batch_size: ``data.batch_size`` (>= 1).
        eval_batch_size: ``data.eval_batch_size`` (>= 1).
        local_epochs: ``data.local_epochs`` (>= 1).
        accumulate_grad_batches: ``data.accumulate_grad_batches`` (>= 1).
        client: ``data.client`` (None, or a client id in ``[0, num_clients)``).
        num_clients: ``data.num_clients``.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("eval_batch_size", eval_batch_size),
        ("local_epochs", local_epochs),
        ("accumulate_grad_batches", accumulate_grad_batches),
    ):
        if value < 1:
            raise ValueError(f"data.{name} must be >= 1, got {value}")
    if client is not None and not 0 <= client < num_clients:
        raise ValueError(f"data.client must be in [0, {num_clients}), got {client}")
