from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_helpers import chronological_dataset
from fellrec.data.schema import EvalUsers
from fellrec.data.split import leave_one_out_split, split_dataset, temporal_split


def _as_lists(period: EvalUsers) -> dict[int, tuple[list[int], list[int], list[int]]]:
    return {
        int(u): (h.tolist(), t.tolist(), c.tolist())
        for u, h, t, c in zip(
            period.users, period.histories, period.targets, period.consumed, strict=True
        )
    }


# 20 interactions; with fractions 0.2 / 0.2 positions 0-11 are train, 12-15 validation, 16-19 test.
TEMPORAL = [
    (0, 0), (1, 1), (0, 1), (2, 2), (1, 2), (0, 2), (3, 0), (1, 0), (0, 6), (2, 6), (1, 3), (4, 0),
    (0, 3), (1, 1), (0, 4), (5, 1),  # validation: u1 repeats i1, u5 has no history
    (0, 5), (0, 3), (2, 3), (0, 7),  # test: u0 repeats i3 (seen in validation)
]  # fmt: skip


def test_temporal_split_periods_and_targets() -> None:
    split = temporal_split(
        chronological_dataset(TEMPORAL, 6, 8),
        history_length=2,
        valid_fraction=0.2,
        test_fraction=0.2,
    )
    assert split.method == "temporal"
    assert [s.tolist() for s in split.train_sequences] == [
        [0, 1, 2, 6],
        [1, 2, 0, 3],
        [2, 6],
        [0],
        [0],
        [],
    ]
    # u1's only validation item was seen in train and u5 has no history: only u0 is evaluated.
    assert _as_lists(split.valid) == {0: ([2, 6], [3, 4], [0, 1, 2, 6])}
    # Test histories include the validation period; u0's repeat of i3 is no target.
    assert _as_lists(split.test) == {
        0: ([3, 4], [5, 7], [0, 1, 2, 3, 4, 6]),
        2: ([2, 6], [3], [2, 6]),
    }
    assert split.valid.users.dtype == np.int64


def test_temporal_split_boundaries_follow_fractions() -> None:
    data = chronological_dataset(TEMPORAL, 6, 8)
    # 0.1 * 20 = 2 test and 2 validation interactions: train = positions 0-15.
    split = temporal_split(data, history_length=10, valid_fraction=0.1, test_fraction=0.1)
    assert sum(len(s) for s in split.train_sequences) == 16
    assert _as_lists(split.valid) == {0: ([0, 1, 2, 6, 3, 4], [5], [0, 1, 2, 3, 4, 6])}
    assert _as_lists(split.test) == {
        0: ([0, 1, 2, 6, 3, 4, 5, 3], [7], [0, 1, 2, 3, 4, 5, 6]),
        2: ([2, 6], [3], [2, 6]),
    }


def test_temporal_empty_period_raises() -> None:
    # Validation period = one interaction of a user with no history.
    data = chronological_dataset([(0, 0), (0, 1), (1, 0), (2, 1), (0, 2)], 3, 3)
    with pytest.raises(ValueError, match=r"empty split.*validation.*valid_fraction=0\.2"):
        temporal_split(data, 2, valid_fraction=0.2, test_fraction=0.2)


@pytest.mark.parametrize(("valid", "test"), [(0.0, 0.1), (0.1, 0.0), (0.5, 0.5)])
def test_temporal_bad_fractions_raise(valid: float, test: float) -> None:
    with pytest.raises(ValueError, match="valid_fraction"):
        temporal_split(
            chronological_dataset(TEMPORAL, 6, 8), 2, valid_fraction=valid, test_fraction=test
        )


LOO = [(0, 0), (2, 3), (1, 1), (0, 1), (2, 0), (0, 2), (1, 2), (2, 3), (0, 3)]


def test_leave_one_out_split() -> None:
    # u0: 0 1 2 3; u1: 1 2 (too short); u2: 3 0 3 (test item is a repeat)
    split = leave_one_out_split(chronological_dataset(LOO, 3, 4), history_length=2)
    assert split.method == "leave_one_out"
    assert [s.tolist() for s in split.train_sequences] == [[0, 1], [1, 2], [3]]
    assert _as_lists(split.valid) == {0: ([0, 1], [2], [0, 1]), 2: ([3], [0], [3])}
    assert _as_lists(split.test) == {0: ([1, 2], [3], [0, 1, 2])}


def test_leave_one_out_without_long_users_raises() -> None:
    with pytest.raises(ValueError, match="empty split"):
        leave_one_out_split(chronological_dataset([(0, 0), (0, 1), (1, 1)], 2, 2), history_length=2)


def test_split_dataset_dispatches() -> None:
    data = chronological_dataset(TEMPORAL, 6, 8)
    by_name = split_dataset(data, "temporal", 2, valid_fraction=0.2, test_fraction=0.2)
    direct = temporal_split(data, 2, 0.2, 0.2)
    assert _as_lists(by_name.test) == _as_lists(direct.test)
    assert (
        split_dataset(chronological_dataset(LOO, 3, 4), "leave_one_out", 2).method
        == "leave_one_out"
    )


def test_split_dataset_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"split.*'random'"):
        split_dataset(chronological_dataset(TEMPORAL, 6, 8), "random", 2)


def test_history_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history_length"):
        leave_one_out_split(chronological_dataset(LOO, 3, 4), history_length=0)


def test_equal_timestamps_keep_the_file_order() -> None:
    """Ties in time are broken by the order of the source rows (a stable sort), not by ids."""
    import pandas as pd

    from fellrec.data.schema import RawDataset, index_dataset

    items = pd.DataFrame({"item_id": ["a", "b", "c", "z"], "title": list("abcz")})
    items["categories"] = [()] * 4
    for order, last in ((["a", "z", "b", "c"], "c"), (["a", "z", "c", "b"], "b")):
        # Four interactions of one user; the last three share a timestamp.
        interactions = pd.DataFrame(
            {"user_id": ["u"] * 4, "item_id": order, "timestamp": [1, 5, 5, 5]}
        )
        indexed = index_dataset(RawDataset("ties", interactions, items))
        split = leave_one_out_split(indexed, history_length=3)
        assert indexed.item_ids[int(split.test.targets[0][0])] == last
        assert indexed.item_ids[int(split.valid.targets[0][0])] == order[2]


def test_temporal_split_cuts_by_time_and_ties_go_to_the_later_period() -> None:
    from fellrec.data.split import temporal_cutoffs

    # Timestamps 10..200; give positions 15 and 16 (around the positional test cut at 16 for
    # 0.2/0.2) the same time: both go to the test period.
    data = chronological_dataset(TEMPORAL, 6, 8)
    times = data.timestamps.copy()
    times[15] = times[16]
    tied = dataclasses.replace(data, timestamps=times)
    assert temporal_cutoffs(tied.timestamps, 0.2, 0.2) == (130, 170)
    split = temporal_split(tied, 2, valid_fraction=0.2, test_fraction=0.2)
    assert split.cutoffs == (130, 170)
    # Position 15 (u5, i1) moved from validation to test: u5 had no history either way, so the
    # periods' users stay; the validation period now holds 3 interactions.
    assert sum(len(s) for s in split.train_sequences) == 12
    assert _as_lists(split.valid) == {0: ([2, 6], [3, 4], [0, 1, 2, 6])}


def test_temporal_split_with_given_cutoffs() -> None:
    data = chronological_dataset(TEMPORAL, 6, 8)  # timestamps 10, 20, ..., 200
    split = temporal_split(data, 2, cutoffs=(125, 165))  # train 10-120, valid 130-160
    assert split.cutoffs == (125, 165)
    assert [len(s) for s in split.train_sequences] == [4, 4, 2, 1, 1, 0]
    assert _as_lists(split.valid) == {0: ([2, 6], [3, 4], [0, 1, 2, 6])}
    by_name = split_dataset(data, "temporal", 2, cutoffs=(125, 165))
    assert _as_lists(by_name.test) == _as_lists(split.test)
    with pytest.raises(ValueError, match="valid_start < test_start"):
        temporal_split(data, 2, cutoffs=(165, 125))


def test_an_empty_period_is_allowed_for_one_silo() -> None:
    data = chronological_dataset([(0, 0), (0, 1), (1, 0), (2, 1), (0, 2)], 3, 3)
    split = temporal_split(data, 2, valid_fraction=0.2, test_fraction=0.2, allow_empty=True)
    assert len(split.valid) == 0 and split.valid.users.dtype == np.int64
    loo = leave_one_out_split(chronological_dataset([(0, 0), (0, 1)], 1, 2), 2, allow_empty=True)
    assert len(loo.valid) == 0 and len(loo.test) == 0
