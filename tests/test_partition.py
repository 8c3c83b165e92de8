from __future__ import annotations

import numpy as np
import pytest

from fellrec.data.partition import (
    attribute_partition,
    dirichlet_partition,
    dominant_categories,
    first_category_index,
    iid_partition,
    kmeans_partition,
    partition_users,
)
from fellrec.data.stats import js_divergence


def _assert_valid(assignment: np.ndarray, num_users: int, num_clients: int) -> None:
    assert assignment.shape == (num_users,) and assignment.dtype == np.int64
    assert assignment.min() >= 0 and assignment.max() < num_clients
    assert np.all(np.bincount(assignment, minlength=num_clients) > 0)


def _two_group_sequences(n: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.choice(25, size=10, replace=False) + (25 if u % 2 else 0) for u in range(2 * n)]


def _kwargs(sequences: list[np.ndarray]) -> dict:
    return {
        "train_sequences": sequences,
        "num_items": 50,
        "item_categories": [("A",) if i < 25 else ("B",) for i in range(50)],
        "user_attributes": {"segment": np.array(["young", "old"] * (len(sequences) // 2))},
    }


def test_iid_balanced_and_seeded() -> None:
    a = iid_partition(103, 5, seed=0)
    _assert_valid(a, 103, 5)
    sizes = np.bincount(a)
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(a, iid_partition(103, 5, seed=0))
    assert not np.array_equal(a, iid_partition(103, 5, seed=1))


def test_kmeans_recovers_separated_groups() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 4))
    emb[1::2] += 20.0  # odd users far away from even users
    a = kmeans_partition(emb, 2, seed=0)
    # Clients are numbered by first user: user 0 (even) is in client 0.
    np.testing.assert_array_equal(a, np.arange(60) % 2)


def test_kmeans_with_duplicate_points_fills_empty_clients() -> None:
    emb = np.zeros((6, 3))
    emb[3:] = 1.0
    a = kmeans_partition(emb, 4, seed=0)
    _assert_valid(a, 6, 4)


def test_partition_users_kmeans_on_bpr_embeddings() -> None:
    seqs = _two_group_sequences()
    a = partition_users("kmeans", 2, seed=0, embedding_dim=16, **_kwargs(seqs))
    np.testing.assert_array_equal(a, np.arange(60) % 2)


def test_first_category_index_and_dominant_categories() -> None:
    item_categories = [("A",), ("B", "A"), (), ("B",)]
    index, names = first_category_index(item_categories)
    assert names == ["(none)", "A", "B"]
    np.testing.assert_array_equal(index, [1, 2, 0, 2])
    seqs = [np.array([0, 1, 1]), np.array([0, 3]), np.array([], dtype=np.int64), np.array([2])]
    # B wins for user 0, the A/B tie goes to A, user 2 has no items (own category 3), user 3 none.
    np.testing.assert_array_equal(dominant_categories(seqs, item_categories), [2, 1, 3, 0])


def _user_category_js(assignment: np.ndarray, categories: np.ndarray, num_clients: int) -> float:
    num_categories = categories.max() + 1
    overall = np.bincount(categories, minlength=num_categories) / len(categories)
    divergences = []
    for c in range(num_clients):
        counts = np.bincount(categories[assignment == c], minlength=num_categories)
        divergences.append(js_divergence(counts / counts.sum(), overall))
    return float(np.mean(divergences))


def test_dirichlet_concentration_controls_heterogeneity() -> None:
    categories = np.repeat(np.arange(5), 80)
    skewed, flat = [], []
    for seed in range(5):
        a = dirichlet_partition(categories, 4, concentration=0.1, seed=seed)
        b = dirichlet_partition(categories, 4, concentration=100.0, seed=seed)
        _assert_valid(a, 400, 4)
        _assert_valid(b, 400, 4)
        skewed.append(_user_category_js(a, categories, 4))
        flat.append(_user_category_js(b, categories, 4))
    assert np.mean(skewed) > 0.3
    assert np.mean(flat) < 0.05


def test_dirichlet_seeded_and_never_empty() -> None:
    categories = np.zeros(
        10, dtype=np.int64
    )  # one category, tiny concentration: one client gets all
    a = dirichlet_partition(categories, 5, concentration=0.01, seed=3)
    _assert_valid(a, 10, 5)
    np.testing.assert_array_equal(a, dirichlet_partition(categories, 5, 0.01, seed=3))
    with pytest.raises(ValueError, match="concentration"):
        dirichlet_partition(categories, 2, concentration=0.0, seed=0)


def test_partition_users_dirichlet() -> None:
    seqs = _two_group_sequences()
    a = partition_users("dirichlet", 3, seed=0, concentration=0.5, **_kwargs(seqs))
    _assert_valid(a, 60, 3)


def test_attribute_grouping_balances_greedily() -> None:
    values = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2)
    # a(5)->0, b(3)->1, c(2)->1 (3 < 5), d(2)->0 (tie 5/5 goes to the lower client)
    expected = [0] * 5 + [1] * 3 + [1] * 2 + [0] * 2
    np.testing.assert_array_equal(attribute_partition(values, 2), expected)
    np.testing.assert_array_equal(
        attribute_partition(values, 4), [0] * 5 + [1] * 3 + [2] * 2 + [3] * 2
    )


def test_attribute_fewer_values_than_clients() -> None:
    with pytest.raises(ValueError, match="only 2 distinct"):
        attribute_partition(np.array(["x", "y", "x", "y"]), 3)


def test_partition_users_attribute() -> None:
    seqs = _two_group_sequences()
    a = partition_users("attribute", 2, seed=0, attribute="segment", **_kwargs(seqs))
    # Equal counts: the tie goes by value, "old" (odd users) before "young", so "old" is client 0.
    np.testing.assert_array_equal(a, 1 - np.arange(60) % 2)
    with pytest.raises(ValueError, match=r"'occupation'.*segment"):
        partition_users("attribute", 2, seed=0, attribute="occupation", **_kwargs(seqs))


@pytest.mark.parametrize("method", ["iid", "kmeans", "dirichlet", "attribute"])
def test_more_clients_than_users(method: str) -> None:
    seqs = _two_group_sequences(2)
    with pytest.raises(ValueError, match="more clients than users: num_clients=5 but only 4 users"):
        partition_users(method, 5, seed=0, attribute="segment", **_kwargs(seqs))


def test_zero_clients_and_unknown_method() -> None:
    seqs = _two_group_sequences(2)
    with pytest.raises(ValueError, match="num_clients"):
        iid_partition(4, 0, seed=0)
    with pytest.raises(ValueError, match=r"'spectral'.*iid.*kmeans.*dirichlet.*attribute"):
        partition_users("spectral", 2, seed=0, **_kwargs(seqs))
