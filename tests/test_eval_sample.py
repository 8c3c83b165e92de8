"""``data.eval_user_fraction``: a seeded share of the evaluable users, decided user by user."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_helpers import leave_one_out_settings
from fellrec.data.eval_sample import kept_user_ids, sample_eval_users
from fellrec.data.pipeline import DatasetSettings, build_federated_data

IDS = np.array([f"user-{n}" for n in range(20_000)])


def test_everyone_is_kept_at_one():
    assert kept_user_ids(IDS[:5], 1.0, seed=3).all()


def test_each_user_is_decided_alone_whatever_else_is_in_the_list():
    kept = kept_user_ids(IDS[:500], 0.3, seed=0)
    # A silo holding only some of the users (in another order) keeps the same of them.
    others = np.arange(499, -1, -7)
    assert kept_user_ids(IDS[others], 0.3, seed=0).tolist() == kept[others].tolist()
    # Numbers and their strings are one id, as a file written by another tool has them.
    assert (
        kept_user_ids(np.arange(50), 0.3, 0).tolist()
        == kept_user_ids(np.array([str(n) for n in range(50)]), 0.3, 0).tolist()
    )


def test_the_share_kept_is_the_fraction_and_seeds_differ():
    kept = kept_user_ids(IDS, 0.3, seed=0)
    # Binomial(20000, 0.3): std 65, so 4 std is 260.
    assert abs(int(kept.sum()) - 6000) < 260
    again = kept_user_ids(IDS, 0.3, seed=1)
    assert (kept != again).mean() > 0.3  # independent draws disagree on 2 * 0.3 * 0.7 = 42%
    smaller = kept_user_ids(IDS, 0.1, seed=0)
    assert not (smaller & ~kept).any()  # a smaller share keeps a subset of the larger's


SETTINGS = leave_one_out_settings(
    DatasetSettings(
        format="synthetic", options={"num_users": 60, "num_items": 40, "num_categories": 3}
    )
)


def test_a_split_keeps_its_training_and_each_kept_users_targets():
    full = build_federated_data(SETTINGS)
    split = sample_eval_users(full.split, full.dataset.user_ids, 0.5, seed=0)
    assert split.train_sequences is full.split.train_sequences
    kept = kept_user_ids(full.dataset.user_ids, 0.5, 0)
    for period in ("valid", "test"):
        before, after = getattr(full.split, period), getattr(split, period)
        assert after.users.tolist() == [u for u in before.users.tolist() if kept[u]]
        position = {u: p for p, u in enumerate(before.users.tolist())}
        for p, user in enumerate(after.users.tolist()):
            assert after.targets[p].tolist() == before.targets[position[user]].tolist()
            assert after.histories[p].tolist() == before.histories[position[user]].tolist()
    # The pipeline applies it from the settings (and keys its cache on it).
    sampled = dataclasses.replace(SETTINGS, eval_user_fraction=0.5)
    assert build_federated_data(sampled).split.test.users.tolist() == split.test.users.tolist()
    assert sampled.cache_key() != SETTINGS.cache_key()


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan"), True])
def test_a_fraction_outside_zero_to_one_is_refused_by_name(fraction):
    with pytest.raises(ValueError, match=r"data\.eval_user_fraction must be .* \(0, 1\]"):
        dataclasses.replace(SETTINGS, eval_user_fraction=fraction).validate()


def test_a_fraction_that_keeps_nobody_says_so():
    with pytest.raises(ValueError, match=r"data\.eval_user_fraction=1e-09 keeps none of the \d+"):
        build_federated_data(dataclasses.replace(SETTINGS, eval_user_fraction=1e-9))
