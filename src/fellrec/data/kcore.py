"""Iterative k-core filtering of an indexed dataset."""

from __future__ import annotations

import numpy as np

from fellrec.data.schema import IndexedDataset


def kcore_filter(data: IndexedDataset, k: int, keep_catalog: bool = False) -> IndexedDataset:
    """Keep only the k-core: users and items with at least ``k`` interactions each.

    Removing a sparse item can push a user below ``k`` and vice versa, so removal is repeated
    until no user or item is below ``k``. Survivors are re-indexed densely; because the new ids
    preserve the relative order of the old ones and rows keep their order, the chronological
    order of the interactions (ties in file order) still holds.

    Args:
        data: The dataset to filter.
        k: Minimum number of interactions per user and per item. ``k <= 1`` keeps everything.
        keep_catalog: Keep every item and its index (a silo filtered against a shared catalog:
            an item sparse in this silo loses its interactions here, not its place in the
            catalog); only users are re-indexed.

    Returns:
        The filtered, densely re-indexed dataset (``data`` itself when ``k <= 1``).

    Raises:
        ValueError: If no interaction survives the filter.
    """
    if k <= 1:
        return data
    keep = _kcore_mask(data.users, data.items, data.num_users, data.num_items, k)
    if not keep.any():
        raise ValueError(
            f"k-core filter with k={k} removed every interaction of {data.name!r} "
            f"({data.num_users} users, {data.num_items} items); use a smaller k"
        )
    return _reindex(data, keep, keep_catalog)


def _kcore_mask(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, k: int
) -> np.ndarray:
    """Boolean mask over interactions that belong to the k-core."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=num_users)
        item_counts = np.bincount(items[keep], minlength=num_items)
        dense = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if np.array_equal(dense, keep):
            return keep
        keep = dense


def _reindex(data: IndexedDataset, keep: np.ndarray, keep_catalog: bool) -> IndexedDataset:
    """Restrict ``data`` to the kept interactions and renumber users (and items) densely."""
    users, items = data.users[keep], data.items[keep]
    kept_users = np.unique(users)
    kept_items = np.arange(data.num_items) if keep_catalog else np.unique(items)
    # ``searchsorted`` on the sorted survivors is a monotone old->new id map.
    new_users = np.searchsorted(kept_users, users).astype(np.int64)
    new_items = np.searchsorted(kept_items, items).astype(np.int64)
    return IndexedDataset(
        name=data.name,
        user_ids=data.user_ids[kept_users],
        item_ids=data.item_ids[kept_items],
        users=new_users,
        items=new_items,
        timestamps=data.timestamps[keep],
        titles=[data.titles[i] for i in kept_items],
        categories=[data.categories[i] for i in kept_items],
        user_attributes={name: values[kept_users] for name, values in data.user_attributes.items()},
    )
