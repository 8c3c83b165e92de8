"""Where each block of a split model runs: client front, server middle, client back (pure).

A model with ``L`` blocks is cut in three (method.md, section 5): the client keeps the embeddings
and blocks ``[0, k_front)``, the server runs ``[k_front, L - k_back)``, and the client finishes with
``[L - k_back, L)`` plus the final norm, the head or scorer and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitPlan:
    """Block ranges of the three parts of a split model.

    Attributes:
        num_layers: ``L``, the number of transformer blocks.
        k_front: Blocks on the client before the server.
        k_back: Blocks on the client after the server.
        front: Blocks ``[0, k_front)``, on the client (after the embeddings).
        middle: Blocks ``[k_front, L - k_back)``, on the server (never empty).
        back: Blocks ``[L - k_back, L)``, on the client (then final norm, head and loss).
    """

    num_layers: int
    k_front: int
    k_back: int
    front: range
    middle: range
    back: range


def plan_split(num_layers: int, k_front: int, k_back: int) -> SplitPlan:
    """Cut ``num_layers`` blocks into client front, server middle and client back.

    Args:
        num_layers: Number of transformer blocks ``L`` of the backbone (>= 1).
        k_front: Blocks kept on the client before the server (``model.k_front``).
        k_back: Blocks kept on the client after the server (``model.k_back``).

    Returns:
        The plan; ``front``, ``middle`` and ``back`` partition ``range(num_layers)`` in order.

    Raises:
        ValueError: If a count is negative or the server would hold no block; the message names
            ``model.k_front`` / ``model.k_back``.
    """
    if num_layers < 1:
        raise ValueError(f"cannot split a model with {num_layers} blocks (need at least 1)")
    if k_front < 0:
        raise ValueError(f"model.k_front must be >= 0, got {k_front}")
    if k_back < 0:
        raise ValueError(f"model.k_back must be >= 0, got {k_back}")
    if k_front + k_back > num_layers - 1:
        raise ValueError(
            f"model.k_front + model.k_back must be <= {num_layers - 1} for a model with "
            f"{num_layers} blocks, so the server holds at least one block; got "
            f"model.k_front={k_front}, model.k_back={k_back}. Lower them, or set "
            "model.split_execution: false to run the model unsplit."
        )
    end = num_layers - k_back
    return SplitPlan(
        num_layers=num_layers,
        k_front=k_front,
        k_back=k_back,
        front=range(0, k_front),
        middle=range(k_front, end),
        back=range(end, num_layers),
    )
