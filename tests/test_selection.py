"""Per-client model selection on validation (federation/selection.py), hand-worked rounds."""

from __future__ import annotations

import math

import torch

from fellrec.federation.selection import ModelSelection


def _rounds(selection: ModelSelection) -> None:
    """Three rounds of three clients; parameter row = 10 * client + round (one column)."""
    rounds = [
        # scores, validation users, overall score
        ([0.2, 0.5, 0.1], [4, 3, 0], 0.30),
        ([0.3, 0.4, 0.9], [4, 3, 0], 0.25),
        ([0.3, 0.6, 0.0], [4, 3, 2], 0.35),
    ]
    for index, (scores, users, overall) in enumerate(rounds):
        parameters = torch.tensor([[10.0 * c + index] for c in selection.held])
        selection.update(
            index,
            torch.tensor(scores, dtype=torch.float64),
            torch.tensor(users),
            parameters,
            overall=overall,
        )
        parameters.fill_(-1.0)  # the caller reuses its buffer: the selection must hold copies


def test_each_client_keeps_its_best_round_and_the_run_its_best_overall_round() -> None:
    selection = ModelSelection(3)
    _rounds(selection)
    # Client 0: 0.2, 0.3, 0.3: the tie in round 2 keeps round 1.
    # Client 1: 0.5, 0.4, 0.6: round 2. Client 2: no validation users until round 2 (0.0 > -inf).
    assert selection.best_scores.tolist() == [0.3, 0.6, 0.0]
    assert selection.best_rounds.tolist() == [1, 2, 2]
    assert selection.best_parameters is not None
    assert selection.best_parameters.flatten().tolist() == [1.0, 12.0, 22.0]
    # Overall: 0.30, 0.25, 0.35: round 2.
    assert selection.best_round == 2 and math.isclose(selection.best_overall, 0.35)


def test_a_client_without_validation_users_keeps_its_first_parameters() -> None:
    selection = ModelSelection(2)
    first = torch.tensor([[1.0], [2.0]])
    selection.update(0, torch.tensor([0.5, 0.9]), torch.tensor([3, 0]), first, overall=0.5)
    first.fill_(-1.0)  # the caller reuses its buffer: the selection holds a copy
    later = torch.tensor([[3.0], [4.0]])
    selection.update(1, torch.tensor([0.7, 0.9]), torch.tensor([3, 0]), later, overall=0.7)
    assert selection.best_rounds.tolist() == [1, -1]
    assert selection.best_parameters is not None
    assert selection.best_parameters.flatten().tolist() == [3.0, 2.0]
    assert selection.best_scores[1].item() == float("-inf")


def test_a_host_holding_one_client_keeps_that_client_s_row() -> None:
    selection = ModelSelection(3, held=[1])
    _rounds(selection)
    # Scores and rounds for every client; parameters only for client 1, at its best round 2.
    assert selection.best_rounds.tolist() == [1, 2, 2]
    assert selection.best_parameters is not None
    assert selection.best_parameters.tolist() == [[12.0]]


def test_a_resumed_selection_continues_as_the_uninterrupted_one() -> None:
    whole = ModelSelection(2)
    resumed_from = ModelSelection(2)
    first = (torch.tensor([0.4, 0.2]), torch.tensor([1, 1]), torch.tensor([[1.0], [2.0]]), 0.3)
    second = (torch.tensor([0.3, 0.5]), torch.tensor([1, 1]), torch.tensor([[3.0], [4.0]]), 0.2)
    whole.update(0, *first[:3], overall=first[3])
    whole.update(1, *second[:3], overall=second[3])
    resumed_from.update(0, *first[:3], overall=first[3])
    resumed = ModelSelection.from_state_dict(resumed_from.state_dict(), held=[0, 1])
    resumed.update(1, *second[:3], overall=second[3])
    assert resumed.best_rounds.tolist() == whole.best_rounds.tolist() == [0, 1]
    assert resumed.best_scores.tolist() == whole.best_scores.tolist()
    assert resumed.best_parameters is not None and whole.best_parameters is not None
    assert resumed.best_parameters.flatten().tolist() == [1.0, 4.0]
    assert torch.equal(resumed.best_parameters, whole.best_parameters)
    assert (resumed.best_round, resumed.best_overall) == (whole.best_round, whole.best_overall)
    assert resumed.best_round == 0


def test_before_any_round_nothing_is_selected_and_a_tie_keeps_the_earlier_round() -> None:
    selection = ModelSelection(2)
    assert selection.best_round == -1 and selection.best_overall == float("-inf")
    assert selection.best_rounds.tolist() == [-1, -1]
    assert selection.best_scores.tolist() == [float("-inf")] * 2
    for index in range(2):  # the same overall score twice: the first round stays the best
        selection.update(
            index,
            torch.tensor([0.5, 0.5], dtype=torch.float64),
            torch.tensor([1, 1]),
            torch.full((2, 1), float(index)),
            overall=0.4,
        )
    assert selection.best_round == 0 and selection.best_rounds.tolist() == [0, 0]
    assert selection.best_parameters is not None
    assert selection.best_parameters.flatten().tolist() == [0.0, 0.0]


def test_a_restored_selection_keeps_the_rows_it_holds() -> None:
    selection = ModelSelection(3, held=[2])
    _rounds(selection)
    restored = ModelSelection.from_state_dict(selection.state_dict(), held=[2])
    assert restored.held == [2]
