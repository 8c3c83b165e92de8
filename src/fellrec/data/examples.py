"""Next-item training examples from sliding windows over the training sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fellrec.data.schema import TrainExamples


def sliding_window_examples(
    train_sequences: Sequence[np.ndarray],
    history_length: int,
    max_examples: int | None = None,
    seed: int = 0,
    stride: int = 1,
) -> TrainExamples:
    """Turn positions ``j >= 1`` of every training sequence into examples.

    The example for position ``j`` of sequence ``s`` has history ``s[max(0, j - H):j]``
    (right-aligned, left-padded with ``-1``) and target ``s[j]``. Position 0 has an empty history
    and is dropped. With ``stride`` ``k`` only every ``k``-th position counts, counted back from
    each sequence's last item (which is always a target): with ``k = H`` the windows tile the
    sequence, so a recommender that predicts the next item at every history position (the
    sequential recommender) trains on every interaction exactly once per epoch.

    Args:
        train_sequences: Per user index, the chronological training items.
        history_length: Maximum history length ``H``.
        max_examples: If set and smaller than the number of examples, keep a uniform random
            subset of this size (without replacement, in the original order).
        seed: Seed of the subsampling.
        stride: Distance between the target positions of consecutive windows.

    Returns:
        The examples, ordered by user and then position.

    Raises:
        ValueError: If ``history_length < 1``, ``max_examples < 1`` or ``stride < 1``.
    """
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    lengths = np.array([len(s) for s in train_sequences], dtype=np.int64)
    flat = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
        if len(train_sequences)
        else np.empty(0, dtype=np.int64)
    )
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    # Target positions in ``flat``: everything except each sequence's first item.
    positions = np.flatnonzero(np.arange(len(flat)) != starts[owner])
    if stride > 1:
        # Distance of each target to its sequence's last item; keep multiples of the stride.
        from_end = (starts + lengths - 1)[owner[positions]] - positions
        positions = positions[from_end % stride == 0]
    if max_examples is not None and max_examples < len(positions):
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(positions), size=max_examples, replace=False)
        positions = positions[np.sort(chosen)]
    users = owner[positions]
    # Column c of the history holds position p - H + c, valid only inside the same sequence.
    window = positions[:, None] - history_length + np.arange(history_length)[None, :]
    inside = window >= starts[users][:, None]
    histories = np.where(inside, flat[np.clip(window, 0, None)], -1)
    return TrainExamples(users=users, histories=histories.astype(np.int64), targets=flat[positions])
