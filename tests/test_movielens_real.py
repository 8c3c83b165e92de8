"""Readers on real MovieLens-100K (RecBole atomic files fetched by the ``ml100k_dir`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fellrec.data.readers import read_dataset, read_recbole
from fellrec.data.schema import RawDataset, index_dataset


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path) -> RawDataset:
    return read_recbole(ml100k_dir)


def test_counts(ml100k: RawDataset) -> None:
    assert ml100k.name == "ml-100k"
    assert ml100k.interactions["user_id"].nunique() == 943
    assert len(ml100k.items) == 1682
    assert len(ml100k.interactions) == 100_000
    assert ml100k.users is not None and len(ml100k.users) == 943


def test_interaction_columns(ml100k: RawDataset) -> None:
    inter = ml100k.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert inter["timestamp"].dtype == np.int64
    assert set(inter["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # MovieLens-100K was collected from September 1997 to April 1998.
    assert inter["timestamp"].min() >= 874_000_000
    assert inter["timestamp"].max() <= 894_000_000
    assert inter.iloc[0].tolist() == ["196", "242", 881250949, 3.0]


def test_index_dataset_keeps_everything(ml100k: RawDataset) -> None:
    indexed = index_dataset(ml100k)
    assert indexed.num_users == 943
    assert indexed.num_items == 1682
    assert indexed.num_interactions == 100_000
    assert np.all(np.diff(indexed.timestamps) >= 0)
    assert set(indexed.user_attributes) == {"age", "gender", "occupation", "zip_code"}


def test_titles_and_categories(ml100k: RawDataset) -> None:
    items = ml100k.items.set_index("item_id")
    assert items.loc["1", "title"].startswith("Toy Story")
    assert items.loc["1", "categories"] == ("Animation", "Children's", "Comedy")
    assert items.loc["2", "title"].startswith("GoldenEye")
    # Non-ASCII titles are decoded as UTF-8.
    assert "Misérables" in items.loc["543", "title"]
    with_categories = sum(1 for categories in items["categories"] if categories)
    assert with_categories / len(items) > 0.95


def test_users(ml100k: RawDataset) -> None:
    assert ml100k.users is not None
    users = ml100k.users.set_index("user_id")
    assert list(users.columns) == ["age", "gender", "occupation", "zip_code"]
    assert set(users["gender"]) == {"M", "F"}
    assert users.loc["1"].tolist() == ["24", "M", "technician", "85711"]
    assert users["occupation"].nunique() == 21


def test_read_dataset_dispatch(ml100k_dir: Path) -> None:
    raw = read_dataset("recbole", path=ml100k_dir, name="ml-100k")
    assert len(raw.interactions) == 100_000


def test_equal_timestamps_keep_the_file_order(ml100k: RawDataset) -> None:
    """ML-100K users often rate several movies in the same second; the file order decides."""
    from fellrec.data.split import leave_one_out_split

    indexed = index_dataset(ml100k)
    inter = ml100k.interactions.reset_index(drop=True)
    split = leave_one_out_split(indexed, history_length=10)
    user_index = {u: i for i, u in enumerate(indexed.user_ids)}
    item_ids = indexed.item_ids
    tied_last = 0
    for user_id, rows in inter.groupby("user_id", sort=False):
        times = rows["timestamp"].to_numpy()
        # The file row that comes last among this user's latest timestamp is the test target.
        last = rows[times == times.max()].index.max()
        expected = str(inter.loc[last, "item_id"])
        target = split.test.targets[list(split.test.users).index(user_index[str(user_id)])]
        assert item_ids[int(target[0])] == expected
        tied_last += int((times == times.max()).sum() > 1)
    assert tied_last > 100  # ties at the end are common, so the rule matters


def test_popularity_on_leave_one_out_matches_other_toolkits(ml100k: RawDataset) -> None:
    """With file-order ties, most-popular gives NDCG@10 ~0.045 (RecBole's order); breaking
    ties by item index gave 0.033 (issue 9)."""
    from fellrec.data.split import leave_one_out_split
    from fellrec.metrics.popularity import evaluate_popularity

    indexed = index_dataset(ml100k)
    split = leave_one_out_split(indexed, history_length=10)
    ndcg = evaluate_popularity(split.train_sequences, split.test, indexed.num_items)["ndcg@10"]
    assert 0.04 < float(ndcg.mean()) < 0.05
