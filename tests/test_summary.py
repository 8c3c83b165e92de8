"""The results summary (``fellrec.metrics.summary``) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from fellrec.metrics.summary import client_sums, metric_names, summarize


def test_summary_hand_computed_with_a_one_user_client_and_an_unevaluated_one() -> None:
    # Users 0-2 of client 0 score 0.2, 0.4, 0.6; user 3 (client 2) scores 1.0; client 1 has none.
    per_user = {"recall@5": torch.tensor([0.2, 0.4, 0.6, 1.0])}
    sums, counts = client_sums(per_user, torch.tensor([0, 0, 0, 2]), 3, ["recall@5"])
    summary = summarize(sums, counts, ["recall@5"])
    assert summary["overall"] == {"recall@5": pytest.approx(2.2 / 4), "users": 4}
    assert summary["clients"] == {
        "0": {"users": 3, "recall@5": pytest.approx(0.4)},
        "1": {"users": 0},
        "2": {"users": 1, "recall@5": 1.0},
    }
    # Balance over the two evaluated clients only: 0.4 and 1.0.
    balance = summary["balance"]["recall@5"]
    assert (balance["min"], balance["max"]) == (pytest.approx(0.4), 1.0)
    assert balance["mean"] == pytest.approx(0.7)


def test_a_single_evaluated_user_is_summarized() -> None:
    summary = summarize(torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([1.0]), ["hit@5"])
    assert summary["overall"] == {"hit@5": 0.5, "users": 1}
    assert summary["clients"] == {"0": {"users": 1, "hit@5": 0.5}}
    assert summary["balance"] == {}  # hit@5 is not a balance metric


def test_no_evaluated_user_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"no user was evaluated \(every client's evaluation"):
        summarize(torch.zeros(2, 1), torch.zeros(2), ["recall@5"])


def test_metric_names_in_their_fixed_order() -> None:
    assert metric_names((1, 5)) == [
        "recall@1",
        "recall@5",
        "ndcg@1",
        "ndcg@5",
        "hit@1",
        "hit@5",
        "mrr@1",
        "mrr@5",
    ]
