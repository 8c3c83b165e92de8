"""A host's per-client tallies (training/host/client_tallies.py), against hand-computed values.

Several processes are simulated by a ``reduce_sum`` / ``gather`` that adds another process's part.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fellrec.training.host.client_tallies import EvaluationSums, RoundStatistics, padded_mask


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _captured(collect: Callable[[Callable[[torch.Tensor], torch.Tensor]], object]) -> torch.Tensor:
    """The tensor a tally hands its ``reduce_sum`` (this process's part)."""
    parts: list[torch.Tensor] = []
    collect(lambda tensor: parts.append(tensor.clone()) or tensor)
    return parts[0]


def test_padded_mask() -> None:
    mask = padded_mask(torch.tensor([[0, 2, -1], [-1, -1, -1], [3, 3, 1]]), 4)
    assert mask.tolist() == [
        [True, False, True, False],
        [False, False, False, False],
        [False, True, False, True],
    ]


def test_round_statistics_sum_a_client_s_micro_batches() -> None:
    stats = RoundStatistics(3)
    stats.add(0, 3.0, 2)
    stats.add(0, 1.5, 1)
    stats.add(2, 4.0, 4)
    stats.diverged[1] = True
    loss_sums, examples, diverged = stats.collect(_identity)
    assert loss_sums.tolist() == [4.5, 0.0, 4.0]
    assert examples.tolist() == [3.0, 0.0, 4.0]
    assert diverged.tolist() == [False, True, False]


def test_round_statistics_over_two_processes() -> None:
    here, there = RoundStatistics(2), RoundStatistics(2)
    here.add(0, 2.0, 1)
    there.add(0, 4.0, 3)
    there.add(1, 1.0, 1)
    there.diverged[0] = True  # one process saw client 0 diverge: it diverged
    other = _captured(there.collect)
    loss_sums, examples, diverged = here.collect(lambda tensor: tensor + other)
    assert loss_sums.tolist() == [6.0, 1.0]
    assert examples.tolist() == [4.0, 1.0]
    assert diverged.tolist() == [True, False]


def test_evaluation_sums_per_client_and_every_user() -> None:
    sums = EvaluationSums(3, ["ndcg@10", "recall@10"])
    sums.add(1, torch.tensor([[1.0, 0.5], [0.0, 0.5]], dtype=torch.float64))
    sums.add(0, torch.tensor([[0.25, 1.0]], dtype=torch.float64))
    totals, counts = sums.collect(_identity)
    assert totals.tolist() == [[0.25, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert counts.tolist() == [1.0, 2.0, 0.0]
    clients, values = sums.user_values(lambda rows: [rows])
    assert clients.tolist() == [1, 1, 0]
    assert values.tolist() == [[1.0, 0.5], [0.0, 0.5], [0.25, 1.0]]


def test_evaluation_sums_over_two_processes() -> None:
    here, there = EvaluationSums(2, ["ndcg@10"]), EvaluationSums(2, ["ndcg@10"])
    here.add(0, torch.tensor([[0.5]], dtype=torch.float64))
    there.add(0, torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    there.add(1, torch.tensor([[0.25]], dtype=torch.float64))
    other = _captured(there.collect)
    totals, counts = here.collect(lambda tensor: tensor + other)
    assert totals.tolist() == [[1.5], [0.25]]
    assert counts.tolist() == [3.0, 1.0]
    clients, values = here.user_values(lambda rows: [rows, there.rows])
    assert clients.tolist() == [0, 0, 0, 1]
    assert values.flatten().tolist() == [0.5, 1.0, 0.0, 0.25]


def test_user_indices_follow_the_values_over_processes() -> None:
    here, there = EvaluationSums(2, ["ndcg@10"]), EvaluationSums(2, ["ndcg@10"])
    here.add(1, torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([7]))
    there.add(0, torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.tensor([3, 4]))
    there.add(1, torch.tensor([[0.25]], dtype=torch.float64))  # no indices given: -1
    users = here.user_indices(lambda rows: [rows, there.user_rows])
    clients, _ = here.user_values(lambda rows: [rows, there.rows])
    assert users.tolist() == [7, 3, 4, -1] and len(users) == len(clients)
    assert EvaluationSums(1, ["ndcg@10"]).user_indices(lambda rows: [rows]).shape == (0,)


def test_an_evaluation_without_users_has_empty_user_values() -> None:
    clients, values = EvaluationSums(2, ["ndcg@10", "mrr@10"]).user_values(lambda rows: [rows])
    assert clients.shape == (0,) and values.shape == (0, 2)


def test_scores_are_ranked_without_the_consumed_items() -> None:
    # 20 items (the largest default cut-off), item i scored 20 - i: item 0 ranks first.
    scores = torch.arange(20, 0, -1, dtype=torch.float64).repeat(2, 1)
    # User 0 consumed item 0 and holds out item 2: with item 0 excluded, item 2 ranks 2nd.
    # User 1 holds out items 6 and 19: ranks 7 and 20.
    targets = torch.tensor([[2, -1], [6, 19]])
    consumed = torch.tensor([[0], [-1]])
    sums = EvaluationSums(2, ["ndcg@10", "recall@10", "mrr@10", "recall@20"])
    sums.add_scores(1, scores, targets, consumed)
    _, values = sums.user_values(lambda rows: [rows])
    ideal_two = 1.0 + 1.0 / math.log2(3)  # IDCG of two targets
    expected = [
        [1.0 / math.log2(3), 1.0, 0.5, 1.0],
        [(1.0 / math.log2(8)) / ideal_two, 0.5, 1.0 / 7, 1.0],
    ]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    totals, counts = sums.collect(_identity)
    assert counts.tolist() == [0.0, 2.0]
    torch.testing.assert_close(totals[1], torch.tensor(expected, dtype=torch.float64).sum(0))
