from __future__ import annotations

import numpy as np
import pytest

from fellrec.data.kcore import kcore_filter
from fellrec.data.schema import IndexedDataset


def _dataset(rows: list[tuple[int, int, int]], num_users: int, num_items: int) -> IndexedDataset:
    """A dataset from (timestamp, user, item) rows given in chronological order."""
    t, u, i = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return IndexedDataset(
        name="tiny",
        user_ids=np.array([f"u{k}" for k in range(num_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(num_items)], dtype=object),
        users=u,
        items=i,
        timestamps=t,
        titles=[f"title {k}" for k in range(num_items)],
        categories=[(f"cat{k}",) for k in range(num_items)],
        user_attributes={"segment": np.array([f"s{k}" for k in range(num_users)])},
    )


# u1: i1 i3 i0, u3: i1 i3, u0: i0 i2, u2: i2. With k=2 the removal cascades:
# u2 (1 item) -> i2 (now 1 user) -> u0 (now 1 item) -> i0 (now 1 user); u1, u3, i1, i3 remain.
CASCADE = [(1, 1, 1), (2, 0, 0), (3, 3, 1), (4, 1, 3), (5, 2, 2), (6, 0, 2), (7, 3, 3), (8, 1, 0)]


def test_kcore_cascades_and_reindexes() -> None:
    data = _dataset(CASCADE, num_users=4, num_items=4)
    core = kcore_filter(data, 2)
    # old user 1 -> 0, old user 3 -> 1; old item 1 -> 0, old item 3 -> 1
    np.testing.assert_array_equal(core.timestamps, [1, 3, 4, 7])
    np.testing.assert_array_equal(core.users, [0, 1, 0, 1])
    np.testing.assert_array_equal(core.items, [0, 0, 1, 1])
    assert list(core.user_ids) == ["u1", "u3"]
    assert list(core.item_ids) == ["i1", "i3"]
    assert core.titles == ["title 1", "title 3"]
    assert core.categories == [("cat1",), ("cat3",)]
    assert list(core.user_attributes["segment"]) == ["s1", "s3"]
    assert core.users.dtype == np.int64 and core.items.dtype == np.int64


def test_kcore_is_idempotent() -> None:
    core = kcore_filter(_dataset(CASCADE, 4, 4), 2)
    again = kcore_filter(core, 2)
    np.testing.assert_array_equal(again.users, core.users)
    np.testing.assert_array_equal(again.items, core.items)
    assert again.num_users == core.num_users and again.num_items == core.num_items


def test_every_survivor_has_k_interactions() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    rows = sorted(zip(range(n), rng.integers(0, 200, n), rng.zipf(1.5, n) % 300, strict=True))
    data = _dataset([(int(t), int(u), int(i)) for t, u, i in rows], 200, 300)
    core = kcore_filter(data, 5)
    assert np.bincount(core.users).min() >= 5
    assert np.bincount(core.items).min() >= 5
    assert np.all(np.diff(core.timestamps) >= 0)


def test_k_at_most_one_returns_data_unchanged() -> None:
    data = _dataset(CASCADE, 4, 4)
    assert kcore_filter(data, 1) is data
    assert kcore_filter(data, 0) is data


def test_nothing_survives_raises() -> None:
    with pytest.raises(ValueError, match="k=3"):
        kcore_filter(_dataset(CASCADE, 4, 4), 3)


def test_kcore_can_keep_the_catalog_and_reindex_only_users() -> None:
    core = kcore_filter(_dataset(CASCADE, num_users=4, num_items=4), 2, keep_catalog=True)
    np.testing.assert_array_equal(core.items, [1, 1, 3, 3])  # catalog indices unchanged
    np.testing.assert_array_equal(core.users, [0, 1, 0, 1])  # old users 1 and 3
    assert core.num_items == 4 and core.titles == [f"title {k}" for k in range(4)]
    assert core.user_ids.tolist() == ["u1", "u3"]
