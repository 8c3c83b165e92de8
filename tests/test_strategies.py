"""The strategies' ``aggregate`` against hand-computed values: who is weighted by what.

``test_aggregation.py`` checks the pure functions; these check that each strategy hands them the
right clients and the right weights (training examples of the participants only), which is where
an equal-weight FedAvg would hide.
"""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.federation.aggregation import heating_weights, loss_distribution
from fellrec.federation.protocol import RoundInputs
from fellrec.federation.strategies import (
    Centralized,
    FedAvg,
    FedProx,
    FELLRec,
    Strategy,
    strategy_from_name,
)

#: Three clients' parameters after a round.
THETA = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


def _inputs(
    examples: list[float], participants: list[bool], theta: torch.Tensor = THETA
) -> RoundInputs:
    return RoundInputs(
        round=0,
        parameters=theta.clone(),
        losses=torch.zeros(len(examples)),
        examples=torch.tensor(examples, dtype=torch.float64),
        participants=torch.tensor(participants),
    )


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.5)], ids=["fedavg", "fedprox"])
def test_fedavg_weights_each_participant_by_its_training_examples(strategy: Strategy) -> None:
    # (1 * [1, 2] + 2 * [3, 4] + 5 * [5, 6]) / 8 = [32, 40] / 8 = [4, 5]; equal weights: [3, 4].
    result = strategy.aggregate(_inputs([1.0, 2.0, 5.0], [True, True, True]))
    torch.testing.assert_close(result.theta, torch.tensor([[4.0, 5.0]] * 3))
    torch.testing.assert_close(result.lr_scale, torch.ones(3))


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.5)], ids=["fedavg", "fedprox"])
def test_fedavg_leaves_out_a_non_participant_and_its_examples(strategy: Strategy) -> None:
    # Client 1 diverged after 7 examples: (1 * [1, 2] + 3 * [5, 6]) / 4 = [16, 20] / 4 = [4, 5].
    # Counting its examples would give [37, 48] / 11; equal weights over the two: [3, 4].
    result = strategy.aggregate(_inputs([1.0, 7.0, 3.0], [True, False, True]))
    torch.testing.assert_close(result.theta, torch.tensor([[4.0, 5.0]] * 3))


def test_fedavg_without_participants_keeps_every_client() -> None:
    result = FedAvg().aggregate(_inputs([0.0, 0.0, 0.0], [False, False, False]))
    torch.testing.assert_close(result.theta, THETA)


@pytest.mark.parametrize(
    ("size_weighted", "mixed"),
    # Participants 0 and 2 with 1 and 3 examples; S = 1 and w = 1, so a_ij = n_j (size-weighted):
    # (1 * [1, 2] + 3 * [5, 6]) / 4 = [4, 5]; the paper's unweighted mix: ([1, 2] + [5, 6]) / 2.
    [(True, [4.0, 5.0]), (False, [3.0, 4.0])],
)
def test_fellrec_without_attention_or_heating_mixes_participants_by_size(
    size_weighted: bool, mixed: list[float]
) -> None:
    strategy = FELLRec(attention=False, heating=False, size_weighted=size_weighted)
    result = strategy.aggregate(_inputs([1.0, 7.0, 3.0], [True, False, True]))
    # The non-participant keeps its own parameters and does not influence anyone.
    torch.testing.assert_close(result.theta, torch.tensor([mixed, [3.0, 4.0], mixed]))


@pytest.mark.parametrize("size_weighted", [True, False])
def test_fellrec_defaults_hand_computed(size_weighted: bool) -> None:
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Orthogonal adapters: S_01 = (cos 90 deg + 1) / 2 = 0.5. Equal losses: p = [0.5, 0.5]; in
    # round 0 the "code" exponent is 1 / beta = 0.2, so w = tanh(0.7 / 0.5 ** 0.2) for both.
    w = math.tanh(0.7 / 0.5**0.2)
    n0, n1 = (1.0, 3.0) if size_weighted else (1.0, 1.0)
    # Row 0: a_00 = n_0, a_01 = 0.5 w n_1. Row 1: a_10 = 0.5 w n_0, a_11 = n_1.
    row0 = torch.tensor([n0, 0.5 * w * n1]) / (n0 + 0.5 * w * n1)
    row1 = torch.tensor([0.5 * w * n0, n1]) / (0.5 * w * n0 + n1)
    inputs = _inputs([1.0, 3.0], [True, True], theta=theta)
    result = FELLRec(size_weighted=size_weighted).aggregate(inputs)
    torch.testing.assert_close(result.theta, torch.stack([row0, row1]))
    torch.testing.assert_close(result.lr_scale, torch.tensor([w, w]))
    assert result.weights is not None and result.similarity is not None
    torch.testing.assert_close(result.weights, torch.tensor([w, w]))
    torch.testing.assert_close(result.similarity, torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_a_round_without_participants_keeps_every_client_and_every_learning_rate() -> None:
    # Nobody trained: parameters as they were, every learning-rate scale 1, no similarity known.
    for strategy in (FedAvg(), FELLRec()):
        result = strategy.aggregate(_inputs([0.0, 0.0, 0.0], [False, False, False]))
        torch.testing.assert_close(result.theta, THETA)
        torch.testing.assert_close(result.lr_scale, torch.ones(3))
    fellrec = FELLRec().aggregate(_inputs([0.0, 0.0, 0.0], [False, False, False]))
    assert fellrec.similarity is not None and bool(fellrec.similarity.isnan().all())
    assert fellrec.weights is not None and bool(fellrec.weights.isnan().all())


def test_fellrec_with_one_participant_records_its_similarity_and_weight() -> None:
    # One participant mixes only with itself (S = 1); the others' entries stay unknown (NaN).
    result = FELLRec().aggregate(_inputs([2.0, 0.0, 0.0], [True, False, False]))
    torch.testing.assert_close(result.theta, THETA)
    assert result.similarity is not None and result.weights is not None
    assert result.similarity[0, 0].item() == 1.0
    assert bool(result.similarity[1:].isnan().all()) and bool(
        result.similarity[0, 1:].isnan().all()
    )
    # p = [1.0]: in round 0 the "code" exponent is 1 / beta = 0.2, w = tanh(0.7 / 1 ** 0.2).
    assert result.weights[0].item() == pytest.approx(math.tanh(0.7))
    assert result.lr_scale[0].item() == pytest.approx(math.tanh(0.7))


def test_fellrec_passes_its_order_to_the_mix() -> None:
    # Uniform similarity, no heating (w = 1), unweighted. Jacobi: both rows [2, 3].
    # Sequential: row 0 first = [2, 3]; row 1 = mean of the new row 0 and itself = [2.5, 3.5].
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    inputs = _inputs([1.0, 1.0], [True, True], theta=theta)
    settings = {"attention": False, "heating": False, "size_weighted": False}
    jacobi = FELLRec(order="jacobi", **settings).aggregate(inputs)
    sequential = FELLRec(order="sequential", **settings).aggregate(inputs)
    torch.testing.assert_close(jacobi.theta, torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    torch.testing.assert_close(sequential.theta, torch.tensor([[2.0, 3.0], [2.5, 3.5]]))


def test_fellrec_defaults_are_the_paper_s() -> None:
    strategy = FELLRec()
    assert (strategy.alpha, strategy.beta, strategy.temperature) == (0.7, 5.0, 0.05)
    assert strategy.size_weighted is True


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: FedProx(mu=0.0), "mu"),
        (lambda: FELLRec(alpha=0.0), "alpha"),
        (lambda: FELLRec(beta=0.0), "beta"),
        (lambda: FELLRec(temperature=0.0), "temperature"),
        (lambda: FELLRec(exponent="cubic"), "exponent"),
        (lambda: FELLRec(order="gauss"), "order"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(build: object, name: str) -> None:
    with pytest.raises(ValueError, match=rf"loop\.strategy\.{name} must be"):
        build()  # type: ignore[operator]


def test_small_positive_settings_are_accepted() -> None:
    assert FELLRec(alpha=0.5, beta=0.5, temperature=0.5).beta == 0.5
    assert FedProx().mu == 0.001


def test_settings_describe_and_class_spec_name_the_constructor_arguments() -> None:
    strategy = FedProx(mu=0.5)
    assert strategy.settings() == {"mu": 0.5}
    assert strategy.describe() == {"name": "fedprox", "mu": 0.5}
    assert strategy.class_spec() == {
        "class_path": "fellrec.federation.strategies.FedProx",
        "init_args": {"mu": 0.5},
    }
    assert strategy_from_name("fedprox").settings() == {"mu": 0.001}
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; choose from fellrec, fedavg"):
        strategy_from_name("fedsgd")


def test_centralized_copies_the_one_trained_adapter_to_every_client() -> None:
    result = Centralized().aggregate(_inputs([3.0, 0.0, 0.0], [True, False, False]))
    torch.testing.assert_close(result.theta, torch.tensor([[1.0, 2.0]] * 3))
    torch.testing.assert_close(result.lr_scale, torch.ones(3))


def test_fellrec_heats_with_its_own_temperature_and_exponent() -> None:
    # Losses 1 and 2 at T = 1: p = softmax([1, 2]); "scaled" in round 1: e = (1 + 1) / beta.
    inputs = RoundInputs(
        round=1,
        parameters=THETA[:2].clone(),
        losses=torch.tensor([1.0, 2.0]),
        examples=torch.tensor([1.0, 1.0], dtype=torch.float64),
        participants=torch.tensor([True, True]),
    )
    result = FELLRec(temperature=1.0, exponent="scaled").aggregate(inputs)
    p = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), dim=0)
    expected = torch.tanh(0.7 / p ** (2 / 5.0)).float()
    assert result.weights is not None
    torch.testing.assert_close(result.weights, expected)
    p_default = loss_distribution(torch.tensor([1.0, 2.0]))
    assert not torch.allclose(result.weights, heating_weights(p_default, 1))
