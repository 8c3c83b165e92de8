"""Tests for fellrec.federation.aggregation with hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.federation import aggregation
from fellrec.federation.aggregation import (
    adapter_similarity,
    fedavg,
    heating_weights,
    loss_distribution,
    personalized_aggregate,
    personalized_weights,
    uniform_similarity,
)

HALF_PLUS = (1 + 1 / math.sqrt(2)) / 2  # (cos 45 deg + 1) / 2 = 0.853553


# --- similarity ----------------------------------------------------------------------------------


def test_similarity_hand_vectors() -> None:
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cos(e1, e2) = 0 -> 0.5; cos(e1, e1 + e2) = cos(e2, e1 + e2) = 1/sqrt(2) -> 0.853553.
    expected = torch.tensor(
        [[1.0, 0.5, HALF_PLUS], [0.5, 1.0, HALF_PLUS], [HALF_PLUS, HALF_PLUS, 1.0]]
    )
    similarity = adapter_similarity(theta)
    assert similarity.dtype == torch.float32
    torch.testing.assert_close(similarity, expected)
    # Scaling a client does not change its similarity; opposite vectors get 0.
    torch.testing.assert_close(
        adapter_similarity(theta * torch.tensor([[3.0], [0.5], [2.0]])), expected
    )
    opposite = adapter_similarity(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    torch.testing.assert_close(opposite, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_similarity_zero_vector_has_no_nan() -> None:
    similarity = adapter_similarity(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    expected = torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]])
    torch.testing.assert_close(similarity, expected)


def test_similarity_over_many_blocks_matches_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(5, 2 * aggregation._GRAM_BLOCK + 123, generator=generator)
    theta[1] = theta[0] + 0.01 * theta[1]  # a near-duplicate pair, cos close to 1
    t64 = theta.double()
    normed = t64 / t64.norm(dim=1, keepdim=True)
    expected = ((normed @ normed.T + 1) / 2).float()
    torch.testing.assert_close(adapter_similarity(theta), expected, atol=1e-6, rtol=0)


def test_similarity_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match=r"clients \[1\]"):
        adapter_similarity(torch.tensor([[1.0, 0.0], [float("inf"), 0.0]]))


def test_uniform_similarity() -> None:
    assert torch.equal(uniform_similarity(3), torch.ones(3, 3))


# --- loss distribution and heating ---------------------------------------------------------------


def test_loss_distribution() -> None:
    # l / T = [20, 21] -> softmax = [1 / (1 + e), e / (1 + e)] = [0.268941, 0.731059].
    p = loss_distribution(torch.tensor([1.0, 1.05]), temperature=0.05)
    torch.testing.assert_close(p, torch.tensor([1 / (1 + math.e), math.e / (1 + math.e)]))
    # Large losses do not overflow: equal losses give a uniform distribution.
    torch.testing.assert_close(
        loss_distribution(torch.tensor([1e4, 1e4])), torch.tensor([0.5, 0.5])
    )
    with pytest.raises(ValueError, match="temperature"):
        loss_distribution(torch.tensor([1.0]), temperature=0.0)
    with pytest.raises(ValueError, match="finite"):
        loss_distribution(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize(
    ("exponent", "expected"),
    [
        # code: e = t + 1/beta = 0.2, 1.2, 2.2. E.g. t=0, p=0.25: 0.25 ** 0.2 = 0.757858,
        # 0.7 / 0.757858 = 0.923656, tanh = 0.727622; p=0.75: 0.75 ** 0.2 = 0.944088 -> 0.630024.
        ("code", [[0.7276221663635073, 0.6300244518555733],
                  [0.9987650376456388, 0.7567685385701056],
                  [0.9999999999997086, 0.8663219306125448]]),
        # scaled: e = (t + 1)/beta = 0.2, 0.4, 0.6 (t=0 coincides with code).
        # t=1, p=0.25: 0.25 ** 0.4 = 0.574349, 0.7 / 0.574349 = 1.218771, tanh = 0.839291.
        ("scaled", [[0.7276221663635073, 0.6300244518555733],
                    [0.8392912073749801, 0.6557773541546704],
                    [0.9228902836605039, 0.6814848000237002]]),
    ],
)  # fmt: skip
def test_heating_weights_hand_numbers(exponent: str, expected: list[list[float]]) -> None:
    p = torch.tensor([0.25, 0.75], dtype=torch.float64)
    for t, row in enumerate(expected):
        w = heating_weights(p, t, alpha=0.7, beta=5.0, exponent=exponent)
        torch.testing.assert_close(w, torch.tensor(row, dtype=torch.float64))


def test_heating_underflow_gives_one_not_nan() -> None:
    # p = softmax([0, 10] / 0.05) -> p_0 = exp(-200) underflows to 0 in float32.
    p = loss_distribution(torch.tensor([0.0, 10.0]))
    assert p[0].item() == 0.0
    w = heating_weights(p, 0)
    assert not torch.isnan(w).any()
    assert w[0].item() == 1.0  # alpha / 0 = inf, tanh(inf) = 1
    assert w[1].item() == pytest.approx(math.tanh(0.7))  # p_1 = 1 -> tanh(alpha)
    assert heating_weights(torch.tensor([1e-30, 1.0]), 50)[0].item() == 1.0


def test_heating_errors_name_the_parameter() -> None:
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        heating_weights(p, 0, alpha=0.0)
    with pytest.raises(ValueError, match="beta"):
        heating_weights(p, 0, beta=-1.0)
    with pytest.raises(ValueError, match="exponent"):
        heating_weights(p, 0, exponent="linear")
    with pytest.raises(ValueError, match="round_index"):
        heating_weights(p, -1)
    with pytest.raises(ValueError, match="probabilities"):
        heating_weights(torch.tensor([1.5, -0.5]), 0)


# --- personalized aggregation --------------------------------------------------------------------


def _two_clients() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    similarity = adapter_similarity(theta)  # S_01 = 0.5
    w = torch.tensor([0.5, 1.0])
    return theta, similarity, w


def test_personalized_weights_hand_computed() -> None:
    _, similarity, w = _two_clients()
    # Row 0: a_00 = 1, a_01 = 0.5 * 0.5 = 0.25 -> [1, 0.25] / 1.25 = [0.8, 0.2].
    # Row 1: a_10 = 0.5 * 1.0 = 0.5, a_11 = 1 -> [0.5, 1] / 1.5 = [1/3, 2/3].
    expected = torch.tensor([[0.8, 0.2], [1 / 3, 2 / 3]])
    torch.testing.assert_close(personalized_weights(similarity, w), expected)


def test_size_weighted_personalized_weights_hand_computed() -> None:
    _, similarity, w = _two_clients()
    sizes = torch.tensor([1.0, 3.0])
    # Row 0: a_00 = n_0 = 1, a_01 = 0.5 * 0.5 * 3 = 0.75 -> [1, 0.75] / 1.75 = [4/7, 3/7].
    # Row 1: a_10 = 0.5 * 1.0 * 1 = 0.5, a_11 = n_1 = 3 -> [0.5, 3] / 3.5 = [1/7, 6/7].
    expected = torch.tensor([[4 / 7, 3 / 7], [1 / 7, 6 / 7]])
    torch.testing.assert_close(personalized_weights(similarity, w, sizes), expected)


def test_size_weighted_mix_with_full_similarity_and_warm_clients_is_fedavg() -> None:
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([10.0, 1.0, 3.0, 6.0])
    mixed = personalized_aggregate(theta, torch.ones(4, 4), torch.ones(4), sizes=sizes)
    expected = fedavg(theta, sizes).expand(4, 6)
    torch.testing.assert_close(mixed, expected)


def test_sizes_must_be_positive() -> None:
    _, similarity, w = _two_clients()
    with pytest.raises(ValueError, match="sizes"):
        personalized_weights(similarity, w, torch.tensor([1.0, 0.0]))


def test_jacobi_and_sequential_hand_computed() -> None:
    theta, similarity, w = _two_clients()
    jacobi = personalized_aggregate(theta, similarity, w, order="jacobi")
    # Both clients mix the snapshot: theta0' = 0.8 e1 + 0.2 e2; theta1' = 1/3 e1 + 2/3 e2.
    torch.testing.assert_close(jacobi, torch.tensor([[0.8, 0.2], [1 / 3, 2 / 3]]))
    sequential = personalized_aggregate(theta, similarity, w, order="sequential")
    # Client 1 mixes client 0's *updated* vector: 1/3 * [0.8, 0.2] + 2/3 * [0, 1]
    # = [0.266667, 0.733333].
    torch.testing.assert_close(sequential, torch.tensor([[0.8, 0.2], [0.8 / 3, 0.2 / 3 + 2 / 3]]))
    assert not torch.allclose(jacobi, sequential)
    assert torch.equal(theta, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # input untouched


def test_three_clients_hand_computed() -> None:
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    similarity = adapter_similarity(theta)
    w = torch.ones(3)
    # Row 0: [1, 0.5, s] / (1.5 + s) with s = 0.853553 -> theta0' = [1 + s, 0.5 + s] / (1.5 + s).
    s = HALF_PLUS
    expected0 = torch.tensor([1 + s, 0.5 + s]) / (1.5 + s)
    # Row 2: [s, s, 1] / (2s + 1) -> theta2' = [s + 1, s + 1] / (2s + 1).
    expected2 = torch.tensor([s + 1, s + 1]) / (2 * s + 1)
    out = personalized_aggregate(theta, similarity, w)
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[2], expected2)


def test_uniform_similarity_and_no_heating_is_the_mean() -> None:
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    out = personalized_aggregate(theta, uniform_similarity(3), torch.ones(3))
    torch.testing.assert_close(out, theta.mean(0).expand(3, 2))


def test_zero_heating_keeps_own_adapter() -> None:
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = personalized_aggregate(theta, uniform_similarity(2), torch.zeros(2))
    torch.testing.assert_close(out, theta)


def test_blocked_and_inplace_match_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    n, p = 4, 3 * aggregation._MIX_BLOCK + 17  # several blocks and a ragged last one
    theta = torch.randn(n, p, generator=generator)
    similarity = adapter_similarity(theta)
    w = torch.rand(n, generator=generator)
    reference = (personalized_weights(similarity, w).double() @ theta.double()).float()
    out = personalized_aggregate(theta, similarity, w)
    torch.testing.assert_close(out, reference)
    copy = theta.clone()
    same = personalized_aggregate(copy, similarity, w, inplace=True)
    assert same is copy
    torch.testing.assert_close(copy, reference)
    sequential = personalized_aggregate(theta.clone(), similarity, w, "sequential", inplace=True)
    torch.testing.assert_close(
        sequential, personalized_aggregate(theta, similarity, w, "sequential")
    )


def test_personalized_errors() -> None:
    theta, similarity, w = _two_clients()
    with pytest.raises(ValueError, match="order"):
        personalized_aggregate(theta, similarity, w, order="gauss")
    with pytest.raises(ValueError, match="similarity"):
        personalized_aggregate(theta, torch.ones(3, 3), w)
    with pytest.raises(ValueError, match="non-negative"):
        personalized_weights(similarity, torch.tensor([-1.0, 1.0]))


# --- FedAvg and FedProx --------------------------------------------------------------------------


def test_fedavg_weighted_mean() -> None:
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    # (1 * [1, 2] + 0 * [3, 4] + 3 * [5, 6]) / 4 = [4, 5].
    torch.testing.assert_close(fedavg(theta, torch.tensor([1, 0, 3])), torch.tensor([4.0, 5.0]))
    torch.testing.assert_close(fedavg(theta, torch.ones(3)), theta.mean(0))
    with pytest.raises(ValueError, match="all be zero"):
        fedavg(theta, torch.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        fedavg(theta, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="sizes"):
        fedavg(theta, torch.ones(2))


# --- edges: one client, one example, small norms, bounds -----------------------------------------


def test_a_single_client_with_a_single_example_is_its_own_average() -> None:
    # total = 1 example is a valid federation (only all-zero sizes are refused).
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(fedavg(theta, torch.tensor([1, 0])), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(fedavg(theta[:1], torch.tensor([1])), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(adapter_similarity(theta[:1]), torch.ones(1, 1))
    torch.testing.assert_close(uniform_similarity(1), torch.ones(1, 1))
    torch.testing.assert_close(loss_distribution(torch.tensor([0.3])), torch.tensor([1.0]))


def test_malformed_inputs_are_refused_with_their_shape() -> None:
    with pytest.raises(ValueError, match=r"theta must have shape \(N, P\) with N >= 1, got \(3,\)"):
        fedavg(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"theta must be a floating tensor, got torch.int64"):
        adapter_similarity(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sizes must have shape \(3,\), got \(2,\)"):
        fedavg(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="sizes must be finite and non-negative"):
        fedavg(torch.ones(3, 2), torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(
        ValueError, match=r"losses must have shape \(N,\) with N >= 1, got \(1, 2\)"
    ):
        loss_distribution(torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"losses must have shape \(N,\) with N >= 1, got \(0,\)"):
        loss_distribution(torch.ones(0))
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        uniform_similarity(0)
    with pytest.raises(
        ValueError, match=r"similarity must be \(N, N\) and w \(N,\), got \(2, 2\) and \(2, 1\)"
    ):
        personalized_weights(torch.ones(2, 2), torch.ones(2, 1))
    with pytest.raises(
        ValueError, match=r"similarity must be \(N, N\) and w \(N,\), got \(3, 3\) and \(2,\)"
    ):
        personalized_weights(torch.ones(3, 3), torch.ones(2))
    with pytest.raises(ValueError, match="similarity and w must be finite"):
        personalized_weights(torch.ones(2, 2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="similarity"):
        personalized_aggregate(torch.ones(2, 2), torch.ones(2, 2), torch.ones(3))


def test_similarity_of_small_vectors_is_their_cosine() -> None:
    # Norms far below 1 (a fresh LoRA): cos of [1, 0] and [1, 1] is 1 / sqrt 2 at any scale.
    theta = torch.tensor([[1e-3, 0.0], [1e-3, 1e-3]])
    expected = (1 / math.sqrt(2) + 1) / 2
    torch.testing.assert_close(
        adapter_similarity(theta), torch.tensor([[1.0, expected], [expected, 1.0]])
    )


def test_zero_similarity_is_allowed_and_keeps_a_client_to_itself() -> None:
    weights = personalized_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    torch.testing.assert_close(weights, torch.eye(2))


def test_heating_bounds() -> None:
    p = torch.tensor([0.25, 0.75])
    # The default beta is the paper's 5: e = 1 / 5 in round 0.
    torch.testing.assert_close(heating_weights(p, 0), heating_weights(p, 0, beta=5.0))
    expected = torch.tanh(0.7 / p.double() ** 0.2).float()
    torch.testing.assert_close(heating_weights(p, 0), expected)
    # beta in (0, 1] is allowed: e = 1 / 0.5 = 2.
    torch.testing.assert_close(
        heating_weights(p, 0, beta=0.5), torch.tanh(0.7 / p.double() ** 2).float()
    )
    with pytest.raises(ValueError, match="beta"):
        heating_weights(p, 0, beta=0.0)
    with pytest.raises(ValueError, match="probabilities"):
        heating_weights(torch.tensor([1.5, 0.5]), 0)
    with pytest.raises(ValueError, match="probabilities"):
        heating_weights(torch.tensor([float("nan"), 0.5]), 0)
    with pytest.raises(
        ValueError, match=r"p must be a floating tensor of shape \(N,\), got torch.float32 \(1, 2\)"
    ):
        heating_weights(torch.ones(1, 2) / 2, 0)
    with pytest.raises(ValueError, match=r"got torch.int64 \(2,\)"):
        heating_weights(torch.tensor([0, 1]), 0)
