"""Small datasets built by hand for the data-stage tests."""

from __future__ import annotations

import numpy as np

from fellrec.data.schema import IndexedDataset


def chronological_dataset(
    pairs: list[tuple[int, int]], num_users: int, num_items: int
) -> IndexedDataset:
    """A dataset from (user, item) pairs in chronological order (timestamps 10, 20, ...)."""
    u, i = (np.array(col, dtype=np.int64) for col in zip(*pairs, strict=True))
    return IndexedDataset(
        name="tiny",
        user_ids=np.array([f"u{k}" for k in range(num_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(num_items)], dtype=object),
        users=u,
        items=i,
        timestamps=np.arange(1, len(u) + 1, dtype=np.int64) * 10,
        titles=[f"t{k}" for k in range(num_items)],
        categories=[() for _ in range(num_items)],
    )
