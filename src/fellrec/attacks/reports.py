"""What a client's reports beside its parameters tell the server (pure functions).

After every round a client reports its loss sum and its number of training examples; the
example count is the number of training windows it trained on (per local epoch), exactly, and
with windows that tile each user's training sequence (``window_stride = history_length``, every
window kept) it sizes the client's training interactions to within one stride per user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def example_count_leak(
    reported: Sequence[float],
    local_epochs: int,
    window_stride: int | None,
    windows: Sequence[int],
    interactions: Sequence[int],
) -> list[dict[str, Any]]:
    """Per client: what its reported example count gives away about the size of its data.

    Args:
        reported: Each client's reported training examples in one round.
        local_epochs: Local epochs per round (the count covers all of them).
        window_stride: Items between the starts of two windows of a user when the windows tile
            the users' sequences; None when they do not (no size estimate then).
        windows: Each client's true training windows (per local epoch).
        interactions: Each client's true training interactions.

    Returns:
        One dict per client: ``windows_reported`` (the count over ``local_epochs``),
        ``windows_exact`` (it equals the true count), ``interactions_estimate``
        (``windows * stride``; None without a stride), ``interactions`` (the truth) and
        ``relative_error`` of the estimate (None without one).

    Raises:
        ValueError: For sequences of different lengths or a non-positive epoch count or stride.
    """
    if not len(reported) == len(windows) == len(interactions):
        raise ValueError(
            f"{len(reported)} reports, {len(windows)} window counts, "
            f"{len(interactions)} interaction counts"
        )
    if local_epochs < 1 or (window_stride is not None and window_stride < 1):
        raise ValueError(
            f"local_epochs={local_epochs} and window_stride={window_stride} must be >= 1"
        )
    leaks = []
    for count, truth, size in zip(reported, windows, interactions, strict=True):
        per_epoch = float(count) / local_epochs
        estimate = per_epoch * window_stride if window_stride is not None else None
        error = abs(estimate - size) / size if estimate is not None and size else None
        leaks.append(
            {
                "windows_reported": per_epoch,
                "windows_exact": per_epoch == float(truth),
                "interactions_estimate": estimate,
                "interactions": int(size),
                "relative_error": error,
            }
        )
    return leaks
