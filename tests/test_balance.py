"""Tests for fellrec.metrics.balance on small hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.metrics.balance import balance_statistics, group_means


def test_balance_statistics_hand_example() -> None:
    stats = balance_statistics([1.0, 2.0, 3.0, 4.0])
    assert stats["mean"] == pytest.approx(2.5)
    # Population variance: (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    assert stats["std"] == pytest.approx(math.sqrt(1.25))
    assert stats["min"] == 1.0 and stats["max"] == 4.0 and stats["gap"] == 3.0
    # Unordered |differences|: 1+2+3+1+2+1 = 10, ordered pairs 20.
    # Gini = 20 / (2 * 16 * 2.5) = 0.25.
    assert stats["gini"] == pytest.approx(0.25)
    # Jain = 10^2 / (4 * (1 + 4 + 9 + 16)) = 100 / 120.
    assert stats["jain"] == pytest.approx(100 / 120)


def test_extreme_inequality_and_equality() -> None:
    one_has_all = balance_statistics([0.0, 0.0, 0.0, 1.0])
    # Gini = 6 / (2 * 16 * 0.25) = 0.75 = (n - 1) / n; Jain = 1 / n.
    assert one_has_all["gini"] == pytest.approx(0.75)
    assert one_has_all["jain"] == pytest.approx(0.25)
    equal = balance_statistics(torch.tensor([0.3, 0.3, 0.3]))
    assert equal["gini"] == pytest.approx(0.0, abs=1e-12)
    assert equal["jain"] == pytest.approx(1.0)
    assert equal["std"] == pytest.approx(0.0, abs=1e-12)
    assert equal["gap"] == pytest.approx(0.0, abs=1e-12)


def test_all_zero_is_balanced() -> None:
    stats = balance_statistics([0.0, 0.0])
    assert stats["gini"] == 0.0
    assert stats["jain"] == 1.0
    assert stats["mean"] == 0.0


def test_nan_clients_are_ignored() -> None:
    stats = balance_statistics([1.0, float("nan"), 3.0])
    # As if [1, 3]: mean 2, std 1, Gini = 2 * 2 / (2 * 4 * 2) = 0.25, Jain = 16 / (2 * 10) = 0.8.
    assert stats["mean"] == pytest.approx(2.0)
    assert stats["std"] == pytest.approx(1.0)
    assert stats["gini"] == pytest.approx(0.25)
    assert stats["jain"] == pytest.approx(0.8)


def test_gini_matches_pairwise_definition() -> None:
    values = torch.rand(17, generator=torch.Generator().manual_seed(3)).double()
    pairwise = (values.unsqueeze(0) - values.unsqueeze(1)).abs().sum()
    expected = float(pairwise / (2 * 17**2 * values.mean()))
    assert balance_statistics(values)["gini"] == pytest.approx(expected, rel=1e-12)


def test_balance_errors() -> None:
    with pytest.raises(ValueError, match="non-NaN"):
        balance_statistics([float("nan"), float("nan")])
    with pytest.raises(ValueError, match="non-NaN"):
        balance_statistics([])
    with pytest.raises(ValueError, match="non-negative"):
        balance_statistics([0.5, -0.1])
    with pytest.raises(ValueError, match="finite"):
        balance_statistics([0.5, float("inf")])
    with pytest.raises(ValueError, match="one-dimensional"):
        balance_statistics(torch.ones(2, 2))


def test_group_means() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    groups = torch.tensor([0, 0, 2, 2, 2])
    means, counts = group_means(values, groups, 4)
    assert counts.tolist() == [2, 0, 3, 0]
    assert counts.dtype == torch.int64
    assert means[0].item() == pytest.approx(1.5)
    assert means[2].item() == pytest.approx(4.0)
    assert torch.isnan(means[1]) and torch.isnan(means[3])
    # The NaN of empty groups is what balance_statistics skips.
    assert balance_statistics(means)["mean"] == pytest.approx(2.75)


def test_group_means_errors() -> None:
    values = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        group_means(values, torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match="integer"):
        group_means(values, torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="shape"):
        group_means(values, torch.tensor([0, 1, 1]), 2)
