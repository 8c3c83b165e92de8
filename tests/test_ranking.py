"""Tests for fellrec.metrics.ranking: hand-computed cases and a torchmetrics cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate,
    RetrievalMRR,
    RetrievalNormalizedDCG,
    RetrievalRecall,
)

from fellrec.metrics.ranking import check_ks, index_mask, ranking_metrics

LOG2_3 = math.log2(3.0)


def _one_user() -> tuple[torch.Tensor, torch.Tensor]:
    # Scores of items 0..4 -> ranking: item0 (r1), item1 (r2), item3 (r3), item4 (r4), item2 (r5).
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.3]])
    targets = index_mask([[1, 3]], 5)  # targets at ranks 2 and 3
    return scores, targets


def test_hand_computed_single_user() -> None:
    scores, targets = _one_user()
    m = ranking_metrics(scores, targets, ks=(1, 2, 3, 5))
    # K=1: top-1 is item0, no hit.
    for name in ("recall", "ndcg", "hit", "mrr"):
        assert m[f"{name}@1"].item() == 0.0
    # K=2: item1 at rank 2. recall 1/2. DCG = 1/log2(3); IDCG over min(2, 2) = 2 items:
    # 1 + 1/log2(3) = 1.6309. NDCG = 0.6309 / 1.6309 = 0.386853. First hit at rank 2 -> MRR 1/2.
    assert m["recall@2"].item() == pytest.approx(0.5)
    assert m["ndcg@2"].item() == pytest.approx(0.38685280723454163, rel=1e-6)
    assert m["hit@2"].item() == 1.0
    assert m["mrr@2"].item() == pytest.approx(0.5)
    # K=3: ranks 2 and 3. DCG = 1/log2(3) + 1/log2(4) = 1.1309; NDCG = 1.1309 / 1.6309 = 0.693426.
    assert m["recall@3"].item() == pytest.approx(1.0)
    assert m["ndcg@3"].item() == pytest.approx(0.6934264036172708, rel=1e-6)
    assert m["mrr@3"].item() == pytest.approx(0.5)
    # K=5: nothing changes after rank 3.
    assert m["ndcg@5"].item() == pytest.approx(0.6934264036172708, rel=1e-6)
    assert m["recall@5"].item() == pytest.approx(1.0)


def test_exclusion_moves_targets_up() -> None:
    scores, targets = _one_user()
    exclude = index_mask([[0]], 5)  # item0 was consumed: ranking becomes 1, 3, 4, 2, (0 at -inf)
    m = ranking_metrics(scores, targets, exclude, ks=(1, 2, 5))
    # K=1: item1 is a hit. recall 1/2; IDCG over min(2, 1) = 1 item = 1, DCG = 1 -> NDCG 1.
    assert m["recall@1"].item() == pytest.approx(0.5)
    assert m["ndcg@1"].item() == pytest.approx(1.0)
    assert m["mrr@1"].item() == pytest.approx(1.0)
    # K=2: both targets on top -> perfect.
    assert m["recall@2"].item() == pytest.approx(1.0)
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    assert m["ndcg@5"].item() == pytest.approx(1.0)


def test_batch_of_users_and_output_shapes() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.7, 0.3],  # target item4 at rank 4
            [0.1, 0.2, 0.3, 0.4, 0.5],  # targets items 4 and 0: ranks 1 and 5
        ]
    )
    targets = index_mask([[4], np.array([4, 0])], 5)
    m = ranking_metrics(scores, targets, ks=(5, 3))
    assert set(m) == {f"{n}@{k}" for n in ("recall", "ndcg", "hit", "mrr") for k in (3, 5)}
    for value in m.values():
        assert value.shape == (2,) and value.dtype == torch.float32
    # User 0: single target at rank 4: NDCG@5 = (1/log2(5)) / 1 = 0.430677, MRR@5 = 1/4.
    assert m["ndcg@5"][0].item() == pytest.approx(0.43067655807339306, rel=1e-6)
    assert m["mrr@5"][0].item() == pytest.approx(0.25)
    assert m["hit@3"][0].item() == 0.0 and m["mrr@3"][0].item() == 0.0
    # User 1: ranks 1 and 5. NDCG@5 = (1 + 1/log2(6)) / (1 + 1/log2(3));
    # NDCG@3 = 1 / (1 + 1/log2(3)).
    assert m["ndcg@5"][1].item() == pytest.approx((1 + 1 / math.log2(6)) / (1 + 1 / LOG2_3))
    assert m["ndcg@3"][1].item() == pytest.approx(1 / (1 + 1 / LOG2_3))
    assert m["recall@3"][1].item() == pytest.approx(0.5)
    assert m["mrr@3"][1].item() == pytest.approx(1.0)


def test_float64_scores_give_float64_metrics() -> None:
    scores, targets = _one_user()
    m = ranking_metrics(scores.double(), targets, ks=(2,))
    assert m["ndcg@2"].dtype == torch.float64
    assert m["ndcg@2"].item() == pytest.approx(0.38685280723454163, rel=1e-12)


def test_more_targets_than_k_caps_idcg() -> None:
    # 4 targets, all on top: NDCG@2 must be exactly 1 because IDCG uses min(|targets|, K) = 2.
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = index_mask([[0, 1, 2, 3]], 5)
    m = ranking_metrics(scores, targets, ks=(2,))
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    assert m["recall@2"].item() == pytest.approx(0.5)


def test_errors() -> None:
    scores, targets = _one_user()
    with pytest.raises(ValueError, match="K=6"):
        ranking_metrics(scores, targets, ks=(5, 6))
    with pytest.raises(ValueError, match="K=0"):
        ranking_metrics(scores, targets, ks=(0,))
    with pytest.raises(ValueError, match="at least one target"):
        ranking_metrics(scores, torch.zeros_like(targets), ks=(1,))
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.full_like(scores, float("nan")), targets, ks=(1,))
    with pytest.raises(ValueError, match="also excluded"):
        ranking_metrics(scores, targets, targets.clone(), ks=(1,))
    with pytest.raises(ValueError, match="targets"):
        ranking_metrics(scores, targets.float(), ks=(1,))
    with pytest.raises(ValueError, match="exclude"):
        ranking_metrics(scores, targets, torch.zeros(1, 4, dtype=torch.bool), ks=(1,))
    with pytest.raises(ValueError, match="ks"):
        check_ks([], 5)


def test_index_mask() -> None:
    mask = index_mask([np.array([0, 2, 2]), [], [3]], 4)
    expected = torch.tensor(
        [[True, False, True, False], [False, False, False, False], [False, False, False, True]]
    )
    assert torch.equal(mask, expected)
    assert index_mask([[], []], 3).shape == (2, 3)
    assert index_mask([], 3).shape == (0, 3)
    with pytest.raises(ValueError, match="4"):
        index_mask([[4]], 4)
    with pytest.raises(ValueError, match="-1"):
        index_mask([[-1]], 4)


def _per_query(
    metric_cls: type,
    k: int,
    preds: torch.Tensor,
    target: torch.Tensor,
    indexes: torch.Tensor,
) -> torch.Tensor:
    # aggregation=callable returns the per-query values (queries sorted by index = user order).
    metric = metric_cls(top_k=k, aggregation=lambda values, dim=None: values)
    metric.update(preds, target, indexes=indexes)
    return metric.compute()


def test_matches_torchmetrics_on_random_data() -> None:
    generator = torch.Generator().manual_seed(0)
    num_users, num_items = 40, 60
    # Strictly positive, continuous scores: no ties, and torchmetrics' recall/MRR ignore items with
    # a non-positive score (see below), so positive scores make the definitions coincide.
    scores = torch.rand(num_users, num_items, generator=generator) + 0.01
    draw = torch.rand(num_users, num_items, generator=generator)
    targets = draw < 0.08
    targets[
        torch.arange(num_users), torch.randint(num_items, (num_users,), generator=generator)
    ] = True
    exclude = (draw > 0.85) & ~targets  # consumed items, never targets
    assert int(targets.sum(1).max()) > 3  # several targets per user, some more than small K

    ks = (1, 5, 10, 20)
    ours = ranking_metrics(scores, targets, exclude, ks=ks)
    # torchmetrics has no exclusion mask: drop the excluded items from its input instead.
    keep = ~exclude
    users = torch.arange(num_users).unsqueeze(1).expand(num_users, num_items)
    preds, target, indexes = scores[keep], targets[keep], users[keep]
    for k in ks:
        reference = {
            "recall": _per_query(RetrievalRecall, k, preds, target, indexes),
            "ndcg": _per_query(RetrievalNormalizedDCG, k, preds, target, indexes),
            "hit": _per_query(RetrievalHitRate, k, preds, target, indexes),
            "mrr": _per_query(RetrievalMRR, k, preds, target, indexes),
        }
        for name, expected in reference.items():
            torch.testing.assert_close(ours[f"{name}@{k}"], expected.float(), atol=1e-6, rtol=1e-5)
        # The default (mean over users) agrees as well.
        mean_ndcg = RetrievalNormalizedDCG(top_k=k)(preds, target, indexes=indexes)
        assert ours[f"ndcg@{k}"].mean().item() == pytest.approx(mean_ndcg.item(), abs=1e-6)


def test_ties_follow_topk_unlike_torchmetrics_tie_averaging() -> None:
    # Documented difference: with tied scores torchmetrics' NDCG averages the gains of the tied
    # group over the positions it occupies, while ours takes torch.topk's order (a hit or not).
    scores = torch.zeros(1, 4)
    targets = index_mask([[0]], 4)
    ours = ranking_metrics(scores, targets, ks=(1,))["ndcg@1"].item()
    assert ours in (0.0, 1.0)
    theirs = RetrievalNormalizedDCG(top_k=1)(scores[0], targets[0], indexes=torch.zeros(4).long())
    assert theirs.item() == pytest.approx(0.25)  # one target among 4 tied items at position 1
    # Our top K always holds exactly K items: all tied, all targets -> recall@2 = 2 / 4.
    m = ranking_metrics(scores, torch.ones(1, 4, dtype=torch.bool), ks=(2,))
    assert m["recall@2"].item() == pytest.approx(0.5)
    assert m["ndcg@2"].item() == pytest.approx(1.0)


def test_a_user_without_a_hit_in_the_top_k_gets_no_reciprocal_rank() -> None:
    # User 0's only target is ranked last (rank 5); user 1's first (rank 1).
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1], [0.9, 0.8, 0.7, 0.6, 0.1]])
    m = ranking_metrics(scores, index_mask([[4], [0]], 5), ks=(1, 2))
    assert m["mrr@2"].tolist() == [0.0, 1.0]
    assert m["hit@2"].tolist() == [0.0, 1.0]
    assert m["ndcg@2"].tolist() == [0.0, 1.0]


def test_bad_inputs_are_named() -> None:
    scores, targets = _one_user()
    with pytest.raises(ValueError, match=r"scores must have shape \(U, I\), got \(5,\)"):
        ranking_metrics(scores[0], targets[0])
    with pytest.raises(ValueError, match=r"scores must be a floating tensor, got torch\.int64"):
        ranking_metrics(scores.long(), targets)
    no_target = torch.zeros(3, 5, dtype=torch.bool)
    no_target[1, 0] = True
    with pytest.raises(ValueError, match=r"users at rows \[0, 2\] have none"):
        ranking_metrics(torch.rand(3, 5), no_target, ks=(1,))
    many = torch.zeros(7, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"users at rows \[0, 1, 2, 3, 4\] have none"):
        ranking_metrics(torch.rand(7, 5), many, ks=(1,))
    with pytest.raises(ValueError, match="ks must name at least one cut-off K"):
        check_ks([], 5)
    with pytest.raises(ValueError):
        check_ks([True], 5)
    with pytest.raises(ValueError, match=r"item index 5 is outside 0\.\.4"):
        index_mask([[0, 5]], 5)
