"""Tests for fellrec.metrics.popularity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fellrec.data.schema import EvalUsers
from fellrec.metrics.popularity import evaluate_popularity, evaluate_scorer, popularity_scores


def _train() -> list[np.ndarray]:
    return [np.array([0, 1, 1]), np.array([1, 2]), np.array([], dtype=np.int64)]


def _eval_users() -> EvalUsers:
    return EvalUsers(
        users=np.array([0, 1]),
        histories=[np.array([0, 1]), np.array([], dtype=np.int64)],
        targets=[np.array([3]), np.array([2, 4])],
        consumed=[np.array([0, 1]), np.array([], dtype=np.int64)],
    )


def test_popularity_scores_count_interactions() -> None:
    counts = popularity_scores(_train(), 5)
    assert counts.dtype == torch.float32
    assert counts.tolist() == [1.0, 3.0, 1.0, 0.0, 0.0]
    assert popularity_scores([], 3).tolist() == [0.0, 0.0, 0.0]


def test_evaluate_popularity_hand_computed() -> None:
    m = evaluate_popularity(_train(), _eval_users(), 5, ks=(1, 2, 5))
    # Counts [1, 3, 1, 0, 0]; ties broken by lower index -> global ranking 1, 0, 2, 3, 4.
    # User 0 consumed {0, 1}: ranking 2, 3, 4 -> target 3 at rank 2.
    assert m["hit@1"][0].item() == 0.0
    assert m["recall@2"][0].item() == pytest.approx(1.0)
    assert m["ndcg@2"][0].item() == pytest.approx(1 / math.log2(3))
    assert m["mrr@5"][0].item() == pytest.approx(0.5)
    # User 1 consumed nothing: ranking 1, 0, 2, 3, 4 -> targets 2 and 4 at ranks 3 and 5.
    # NDCG@5 = (1/log2(4) + 1/log2(6)) / (1 + 1/log2(3)) = 0.543771.
    assert m["hit@2"][1].item() == 0.0
    assert m["recall@5"][1].item() == pytest.approx(1.0)
    assert m["ndcg@5"][1].item() == pytest.approx(0.5437713091520254, rel=1e-6)
    assert m["mrr@5"][1].item() == pytest.approx(1 / 3)
    for value in m.values():
        assert value.shape == (2,) and value.dtype == torch.float32


def test_batches_do_not_change_results() -> None:
    full = evaluate_popularity(_train(), _eval_users(), 5, ks=(1, 5))
    tiny = evaluate_popularity(_train(), _eval_users(), 5, ks=(1, 5), batch_size=1)
    for name, value in full.items():
        assert torch.equal(value, tiny[name])


def test_no_eval_users_gives_empty_metrics() -> None:
    empty = EvalUsers(users=np.zeros(0, dtype=np.int64), histories=[], targets=[], consumed=[])
    m = evaluate_popularity(_train(), empty, 5, ks=(5,))
    assert set(m) == {"recall@5", "ndcg@5", "hit@5", "mrr@5"}
    assert all(v.shape == (0,) for v in m.values())


def test_errors() -> None:
    with pytest.raises(ValueError, match="7"):
        popularity_scores([np.array([7])], 5)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_popularity(_train(), _eval_users(), 5, batch_size=0)
    with pytest.raises(ValueError, match="K=10"):
        evaluate_popularity(_train(), _eval_users(), 5, ks=(10,))


def test_local_popularity_ranks_by_each_clients_own_training_data() -> None:
    from fellrec.metrics.popularity import evaluate_local_popularity

    # Client 0 = user 0 (counts [1, 2, 0, 0, 0]), client 1 = users 1, 2 (counts [0, 1, 1, 0, 0]).
    clients = np.array([0, 1, 1])
    m = evaluate_local_popularity(_train(), _eval_users(), 5, clients, ks=(1, 2))
    # User 0 (consumed 0, 1): its client's ranking 1, 0, 2, 3, 4 -> 2, 3, 4: target 3 at rank 2.
    assert m["recall@1"][0].item() == 0.0 and m["recall@2"][0].item() == 1.0
    # User 1 (client 1): ranking 1, 2, 0, 3, 4 -> targets {2, 4}: 2 at rank 2.
    assert m["recall@1"][1].item() == 0.0 and m["recall@2"][1].item() == 0.5
    # The global ranking (counts [1, 3, 1, 0, 0]: 1, 0, 2, ...) puts 2 at rank 3 for user 1.
    assert evaluate_popularity(_train(), _eval_users(), 5, ks=(2,))["recall@2"][1].item() == 0.0


def test_an_item_past_the_catalog_is_refused_by_index() -> None:
    with pytest.raises(ValueError, match=r"item index 5 is outside 0\.\.4"):
        popularity_scores([np.array([0, 5])], 5)
    with pytest.raises(ValueError, match=r"item index -1 is outside 0\.\.4"):
        popularity_scores([np.array([0, -1])], 5)


def test_a_scorer_is_given_each_user_s_history() -> None:
    seen: list[list[int]] = []

    def score(users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        seen.extend(h.tolist() for h in histories)
        return torch.zeros(len(users), 5)

    evaluate_scorer(score, _eval_users(), 5, ks=(1,))
    assert seen == [[0, 1], []]
