from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from fellrec.data.schema import EvalUsers, RawDataset, index_dataset
from fellrec.data.split import leave_one_out_split, temporal_split
from fellrec.data.synthetic import SEGMENTS, VOCABULARY, generate_synthetic


@pytest.fixture(scope="module")
def raw() -> RawDataset:
    return generate_synthetic(seed=0)


def test_deterministic_from_seed(raw: RawDataset) -> None:
    again = generate_synthetic(seed=0)
    pd.testing.assert_frame_equal(raw.interactions, again.interactions)
    pd.testing.assert_frame_equal(raw.items, again.items)
    pd.testing.assert_frame_equal(raw.users, again.users)
    other = generate_synthetic(seed=1)
    assert not raw.interactions.equals(other.interactions)


def test_shape_and_columns(raw: RawDataset) -> None:
    assert list(raw.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert raw.interactions["timestamp"].dtype == np.int64
    assert len(raw.items) == 400 and raw.items["item_id"].is_unique
    assert raw.items["title"].is_unique
    assert set(raw.users["segment"]) <= set(SEGMENTS) and len(raw.users) == 600
    per_user = raw.interactions.groupby("user_id").size()
    assert per_user.min() >= 15 and per_user.max() <= 35 and len(per_user) == 600
    # no user consumes an item twice; timestamps strictly increase per user
    assert not raw.interactions.duplicated(["user_id", "item_id"]).any()
    assert not raw.interactions.duplicated(["user_id", "timestamp"]).any()


def test_titles_use_their_category_vocabulary(raw: RawDataset) -> None:
    for title, (category,) in zip(raw.items["title"], raw.items["categories"], strict=True):
        adjectives, nouns = (set(words.split()) for words in VOCABULARY[category])
        words = set(re.findall(r"[A-Z][a-z]+", title.replace("'s", "")))
        assert words & (adjectives | nouns), title
    assert raw.items["categories"].map(len).eq(1).all()
    assert raw.items["categories"].map(lambda c: c[0]).nunique() == 8


def test_series_are_followed(raw: RawDataset) -> None:
    titles = dict(zip(raw.items["item_id"], raw.items["title"], strict=True))
    parts = {t for t in titles.values() if re.search(r", Part \d$", t)}
    assert len(parts) > 40
    follows = total = 0
    for _, group in raw.interactions.groupby("user_id"):
        seq = [titles[i] for i in group.sort_values("timestamp")["item_id"]]
        for prev, nxt in itertools.pairwise(seq):
            match = re.fullmatch(r"(.*), Part (\d)", prev)
            if match and f"{match[1]}, Part {int(match[2]) + 1}" in parts:
                total += 1
                follows += nxt == f"{match[1]}, Part {int(match[2]) + 1}"
    assert follows / total > 0.5


def test_temporal_split_keeps_many_users(raw: RawDataset) -> None:
    split = temporal_split(index_dataset(raw), history_length=10)
    assert len(split.valid) > 300 and len(split.test) > 300
    assert np.mean([len(t) for t in split.test.targets]) > 2


def _ndcg_at_10(period: EvalUsers, scores: list[np.ndarray]) -> float:
    discounts = 1.0 / np.log2(np.arange(2, 12))
    values = []
    for s, targets, consumed in zip(scores, period.targets, period.consumed, strict=True):
        s = s.astype(np.float64).copy()
        s[consumed] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        dcg = (np.isin(top, targets) * discounts).sum()
        values.append(dcg / discounts[: min(len(targets), 10)].sum())
    return float(np.mean(values))


def test_content_beats_popularity_which_beats_random(raw: RawDataset) -> None:
    data = index_dataset(raw)
    split = leave_one_out_split(data, history_length=10)
    item_category = np.unique([c[0] for c in data.categories], return_inverse=True)[1].ravel()
    popularity = np.bincount(np.concatenate(split.train_sequences), minlength=data.num_items)
    popularity = popularity / popularity.max()
    # Content: share of the user's history in the item's category (popularity breaks ties).
    content = []
    for consumed in split.test.consumed:
        share = np.bincount(item_category[consumed], minlength=item_category.max() + 1)
        content.append(share[item_category] / len(consumed) + 1e-3 * popularity)
    rng = np.random.default_rng(0)
    ndcg_pop = _ndcg_at_10(split.test, [popularity] * len(split.test))
    ndcg_content = _ndcg_at_10(split.test, content)
    ndcg_random = _ndcg_at_10(split.test, [rng.random(data.num_items) for _ in split.test.users])
    assert ndcg_content > ndcg_pop + 0.05 and ndcg_content > 1.5 * ndcg_pop
    assert ndcg_pop > 2 * ndcg_random


def test_segments_differ_in_taste(raw: RawDataset) -> None:
    data = index_dataset(raw)
    category = np.array([c[0] for c in data.categories])[data.items]
    segment = data.user_attributes["segment"][data.users]
    table = pd.crosstab(segment, category, normalize="index").to_numpy()
    assert np.abs(table - table.mean(0)).max() > 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_categories": 13},
        {"num_categories": 0},
        {"num_items": 5},
        {"interactions_per_user": (10, 5)},
        {"interactions_per_user": (10, 500)},
        {"num_users": 0},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic(**kwargs)
