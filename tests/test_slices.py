"""Tests for fellrec.metrics.slices: cut points, membership and summaries by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_helpers import small_datamodule
from fellrec.metrics.bootstrap import bootstrap_interval
from fellrec.metrics.slices import (
    SLICE_NAMES,
    define_slices,
    history_cuts,
    item_groups,
    popularity_cuts,
    slice_summary,
    user_groups,
)


def test_reports_list_the_slices_in_the_same_order() -> None:
    from fellrec.reporting.tables import SLICE_ORDER  # restated there to load without torch

    assert SLICE_ORDER == SLICE_NAMES


def test_popularity_thirds_are_cut_by_interactions() -> None:
    # Sorted counts 10, 5, 3, 1, 1 (total 20): 10 reaches a third (6.67), 15 two thirds (13.3).
    counts = np.array([10, 5, 3, 1, 1, 0])
    assert popularity_cuts(counts) == (10, 5)
    assert item_groups(counts).tolist() == [0, 1, 2, 2, 2, 3]  # head, torso, tail x3, new


def test_popularity_groups_keep_equal_counts_together() -> None:
    # 6, 3, 3, 2 (total 14): running 6 >= 14/3 (head from 6), 12 >= 28/3 (torso from 3).
    assert popularity_cuts(np.array([6, 3, 3, 2, 0])) == (6, 3)
    assert item_groups(np.array([6, 3, 3, 2, 0])).tolist() == [0, 1, 1, 2, 3]
    # Every item with the same count: all head, torso and tail empty.
    assert item_groups(np.array([4, 4, 4])).tolist() == [0, 0, 0]
    # No training interaction at all: every item is new.
    assert item_groups(np.zeros(3, dtype=np.int64)).tolist() == [3, 3, 3]


def test_history_terciles_of_the_users_with_training_data() -> None:
    lengths = np.array([0, 1, 2, 3, 4, 5, 6])
    # Users with data sorted: 1..6 (n = 6); positions 2 and 4 hold 3 and 5.
    assert history_cuts(lengths) == (3, 5)
    assert user_groups(lengths).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert history_cuts(np.zeros(2, dtype=np.int64)) == (1, 1)


@pytest.fixture()
def definition():
    train = [
        np.array([0, 0, 1]),  # user 0, client 0
        np.array([0, 2]),  # user 1, client 0
        np.array([0, 1, 3]),  # user 2, client 1
        np.array([4]),  # user 3, client 1
    ]
    return define_slices(train, np.array([0, 0, 1, 1]), num_items=6, num_clients=2)


def test_definition_counts_items_users_and_clients(definition) -> None:
    # Counts 4, 2, 1, 1, 1, 0 (total 9): head from 4 (12 >= 9), torso from 2 (18 >= 18).
    assert definition.item_counts.tolist() == [4, 2, 1, 1, 1, 0]
    assert definition.item_group.tolist() == [0, 1, 2, 2, 2, 3]
    # Lengths 3, 2, 3, 1: sorted 1, 2, 3, 3 -> medium from 2, long from 3.
    assert definition.user_group.tolist() == [2, 1, 2, 0]
    assert definition.client_items.tolist() == [
        [True, True, True, False, False, False],
        [True, True, False, True, True, False],
    ]
    cuts = definition.cuts()
    assert cuts["popularity"]["head_min_count"] == 4
    assert cuts["popularity"]["torso_min_count"] == 2
    assert cuts["popularity"]["items"] == {"head": 1, "torso": 1, "tail": 3, "new": 1}
    assert cuts["popularity"]["interactions"] == {"head": 4, "torso": 2, "tail": 3, "new": 0}
    assert cuts["history"]["medium_min_length"] == 2 and cuts["history"]["long_min_length"] == 3
    assert cuts["history"]["users"] == {"short": 1, "medium": 1, "long": 2}
    assert cuts["client_items"]["items_per_client"] == [3, 4]


def test_membership_by_target_history_and_own_client(definition) -> None:
    users = np.array([0, 1, 2, 3])
    targets = [np.array([5]), np.array([3]), np.array([2, 1]), np.array([0])]
    masks = {k: v.tolist() for k, v in definition.membership(users, targets).items()}
    assert list(masks) == list(SLICE_NAMES)
    assert masks["popularity/head"] == [False, False, False, True]
    assert masks["popularity/torso"] == [False, False, True, False]
    # User 2 has two targets (tail item 2, torso item 1): it counts in both slices.
    assert masks["popularity/tail"] == [False, True, True, False]
    assert masks["popularity/new"] == [True, False, False, False]
    assert masks["history/short"] == [False, False, False, True]
    assert masks["history/medium"] == [False, True, False, False]
    assert masks["history/long"] == [True, False, True, False]
    # Item 3 is client 1's, not client 0's: unseen for user 1 (client 0).
    assert masks["client_items/seen"] == [False, False, True, True]
    assert masks["client_items/unseen"] == [True, True, True, False]


def test_slice_summary_means_intervals_and_clients(definition) -> None:
    users = np.array([0, 1, 2, 3])
    targets = [np.array([5]), np.array([3]), np.array([2, 1]), np.array([0])]
    membership = definition.membership(users, targets)
    ndcg = torch.tensor([0.5, 0.25, 1.0, 0.0])
    per_user = {"ndcg@10": ndcg, "recall@10": torch.tensor([1.0, 1.0, 0.5, 0.0])}
    clients = torch.tensor([0, 0, 1, 1])
    names = ["ndcg@10", "recall@10"]
    summary = slice_summary(per_user, membership, clients, 2, names, {"x": 1}, seed=3)
    groups = summary["groups"]
    assert summary["definition"] == {"x": 1} and summary["resamples"] == 1000
    assert groups["popularity/tail"]["users"] == 2
    assert groups["popularity/tail"]["ndcg@10"] == pytest.approx(0.625)
    assert groups["history/long"]["recall@10"] == pytest.approx(0.75)
    assert groups["client_items/unseen"]["ndcg@10"] == pytest.approx(1.75 / 3)
    # One user: the interval is that user's value.
    assert groups["popularity/new"]["ci"]["ndcg@10"] == [0.5, 0.5]
    # The interval is the test summary's bootstrap, drawn from the slice's own generator.
    slice_index = SLICE_NAMES.index("client_items/unseen")
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 500_009 + slice_index)
    expected = bootstrap_interval(ndcg[membership["client_items/unseen"]], generator=generator)
    assert groups["client_items/unseen"]["ci"]["ndcg@10"] == list(expected)
    # Per client, the seen/unseen slices only.
    assert summary["clients"]["0"]["client_items/unseen"] == {
        "users": 2,
        "ndcg@10": pytest.approx(0.375),
        "recall@10": pytest.approx(1.0),
    }
    assert summary["clients"]["0"]["client_items/seen"] == {"users": 0}
    assert summary["clients"]["1"]["client_items/unseen"]["ndcg@10"] == pytest.approx(1.0)
    assert set(summary["clients"]["1"]) == {"client_items/seen", "client_items/unseen"}
    # Seeded: the same call gives the same intervals.
    again = slice_summary(per_user, membership, clients, 2, names, {"x": 1}, seed=3)
    assert again == summary


def test_slice_summary_without_users_or_resamples(definition) -> None:
    membership = definition.membership(np.array([3]), [np.array([0])])
    per_user = {"ndcg@10": torch.tensor([0.2])}
    summary = slice_summary(per_user, membership, torch.tensor([1]), 2, ["ndcg@10"], resamples=0)
    assert summary["groups"]["popularity/new"] == {"users": 0}
    assert summary["groups"]["popularity/head"] == {
        "users": 1,
        "ndcg@10": pytest.approx(0.2),
        "ci": {},
    }
    limited = slice_summary(
        {"ndcg@10": torch.tensor([0.2]), "mrr@10": torch.tensor([0.5])},
        membership,
        torch.tensor([1]),
        2,
        ["ndcg@10", "mrr@10"],
        interval_metrics=["mrr@10"],
    )
    assert set(limited["groups"]["popularity/head"]["ci"]) == {"mrr@10"}


def test_the_data_module_slices_its_own_evaluated_users_only(tmp_path) -> None:
    data = small_datamodule(tmp_path)
    test = data.data.split.test
    users = torch.from_numpy(test.users[::-1].copy())  # any order
    masks = data.slice_membership("test", users)
    expected = data.slices.membership(test.users[::-1], test.targets[::-1])
    assert all(torch.equal(masks[name], expected[name]) for name in SLICE_NAMES)
    with pytest.raises(ValueError, match="not its evaluated users"):
        data.slice_membership("test", torch.tensor([-1]))
    assert data.popularity["slices"]["groups"]["history/long"]["users"] > 0


def test_a_third_reached_exactly_closes_the_group() -> None:
    # 3, 2, 1, 1, 1, 1 (total 9): running 3 = 9/3 exactly (head from 3), 6 = 2 * 9/3 exactly
    # (torso from 1 after 3 + 2 + 1); "at least a third", not "more than".
    assert popularity_cuts(np.array([3, 2, 1, 1, 1, 1])) == (3, 1)
    assert popularity_cuts(np.array([1])) == (1, 1)  # one interaction: one head item
    # 4, 3, 2, 2, 2, 2 (total 15): 4 alone is below a third (12 < 15); 4 + 3 reaches it (head
    # from 3, below the most popular item), 4 + 3 + 2 + 2 = 11 two thirds (33 >= 30).
    assert popularity_cuts(np.array([4, 3, 2, 2, 2, 2])) == (3, 2)
    assert popularity_cuts(np.zeros(3, dtype=np.int64)) == (0, 0)
