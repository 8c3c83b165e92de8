"""The round protocol's pure pieces, against hand-computed values."""

from __future__ import annotations

import torch

from fellrec.federation.protocol import RoundConfig, RoundResult, round_inputs, round_record
from fellrec.federation.strategies import FedProx, FELLRec


def test_reports_become_inputs_diverged_clients_go_back_and_sit_out():
    trained = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    start = torch.zeros(3, 2)
    inputs = round_inputs(
        4,
        trained,
        start,
        loss_sums=torch.tensor([6.0, 0.0, 9.0], dtype=torch.float64),
        examples=torch.tensor([3.0, 0.0, 3.0], dtype=torch.float64),
        diverged=torch.tensor([False, False, True]),
    )
    assert inputs.round == 4
    assert torch.equal(inputs.parameters, torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(trained[2], torch.tensor([3.0, 3.0]))  # the caller's matrix is untouched
    assert inputs.participants.tolist() == [True, False, False]
    assert inputs.losses.tolist() == [2.0, 0.0, 3.0]


def test_a_round_config_per_client_and_the_record_of_a_round():
    config = FedProx(mu=0.5).configure_round(2, 3, torch.tensor([1.0, 0.5, 0.25]))
    assert isinstance(config, RoundConfig) and config.num_clients == 3
    assert config.for_client(1).lr_scale == 0.5 and config.for_client(1).proximal_mu == 0.5
    assert FELLRec().configure_round(0, 2).for_client(0).lr_scale == 1.0
    inputs = round_inputs(
        2,
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.tensor([4.0, 0.0], dtype=torch.float64),
        torch.tensor([2.0, 0.0], dtype=torch.float64),
        torch.tensor([False, False]),
    )
    result = RoundResult(
        torch.zeros(2, 1), torch.tensor([0.5, 1.0]), weights=torch.tensor([0.5, 1])
    )
    record = round_record(2, inputs, result, lr=0.01)
    assert record == {
        "round": 2,
        "train_loss": [2.0, None],
        "lr": [0.005, 0.01],
        "heating_weight": [0.5, 1.0],
    }


def test_a_client_told_to_sit_out_is_told_so_and_one_example_is_enough_to_take_part():
    config = RoundConfig(
        round=1, lr_scale=torch.ones(2), proximal_mu=0.0, trains=torch.tensor([True, False])
    )
    assert config.for_client(0).trains is True and config.for_client(1).trains is False
    # One example: a participant whose mean loss is its summed loss.
    inputs = round_inputs(
        0,
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        loss_sums=torch.tensor([0.5, 0.0], dtype=torch.float64),
        examples=torch.tensor([1.0, 0.0], dtype=torch.float64),
        diverged=torch.tensor([False, False]),
    )
    assert inputs.participants.tolist() == [True, False]
    assert inputs.losses.tolist() == [0.5, 0.0]


def test_the_record_holds_the_similarity_a_strategy_reports():
    inputs = round_inputs(
        0,
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([False, False]),
    )
    similarity = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    record = round_record(0, inputs, RoundResult(torch.zeros(2, 1), torch.ones(2), similarity), 0.1)
    assert record["similarity"] == [[1.0, 0.5], [0.5, 1.0]]
