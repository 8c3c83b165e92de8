"""The scoring of a server's guesses against a client's truth, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.attacks.scoring import membership_scores, precision_recall_at_k, roc_auc, spearman


def test_roc_auc_counts_the_ordered_pairs():
    # Members score 0.35 and 0.8, the others 0.1 and 0.4: of the 4 (member, other) pairs,
    # 3 put the member higher (0.35 < 0.4 is the one miss): AUC = 3/4.
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    members = torch.tensor([False, False, True, True])
    assert roc_auc(scores, members) == pytest.approx(0.75)


def test_roc_auc_gives_ties_one_half_and_nan_without_two_groups():
    # One member at 0.5 against two others at 0.5 and 0.2: pairs score 0.5 and 1 -> 0.75.
    assert roc_auc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.75)
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))


def test_precision_and_recall_of_the_top_k():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2])
    members = torch.tensor([True, True, False, True, False])
    # Top 3: items 0, 2, 3 -> 2 members of 3 named, 2 of the 3 members found.
    assert precision_recall_at_k(scores, members, 3) == pytest.approx((2 / 3, 2 / 3))
    # Top 1: item 0, a member.
    assert precision_recall_at_k(scores, members, 1) == pytest.approx((1.0, 1 / 3))
    precision, recall = precision_recall_at_k(scores, members, 0)
    assert math.isnan(precision) and recall == 0.0
    with pytest.raises(ValueError, match=r"k=6 is outside \[0, 5\]"):
        precision_recall_at_k(scores, members, 6)


def test_spearman_uses_average_ranks():
    # Ranks of x: 1, 2.5, 2.5, 4; of y: 1, 2, 3, 4. Pearson of the ranks:
    # dx = (-1.5, 0, 0, 1.5), dy = (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5).
    x = torch.tensor([1.0, 2.0, 2.0, 5.0])
    y = torch.tensor([10.0, 20.0, 30.0, 40.0])
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert spearman(-x, y) == pytest.approx(-4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(spearman(torch.ones(3), y[:3]))
    assert math.isnan(spearman(x[:1], y[:1]))


def test_membership_scores_turn_a_reversed_signal_around():
    counts = torch.tensor([3.0, 0.0, 1.0, 0.0, 2.0])
    # Members move least: reversed, a perfect separation and count ranking once turned.
    moves = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2])
    scores = membership_scores(moves, counts)
    assert scores["auc"] == pytest.approx(0.0)
    assert scores["auc_either"] == pytest.approx(1.0)
    assert scores["precision_at_size"] == scores["recall_at_size"] == pytest.approx(1.0)
    assert scores["spearman"] == pytest.approx(1.0)
    assert (scores["members"], scores["items"]) == (3, 5)
    # Chance: a constant signal separates nothing.
    flat = membership_scores(torch.zeros(5), counts)
    assert flat["auc"] == flat["auc_either"] == pytest.approx(0.5)
    assert math.isnan(flat["spearman"])
