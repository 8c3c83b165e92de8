"""Bootstrap confidence intervals against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from fellrec.metrics.bootstrap import bootstrap_interval, confidence_intervals


def test_constant_values_have_a_point_interval() -> None:
    assert bootstrap_interval(torch.full((7,), 0.25)) == (0.25, 0.25)


def test_two_users_span_both_values() -> None:
    # Resampled means of {0, 1} are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are 0 and 1.
    generator = torch.Generator().manual_seed(0)
    assert bootstrap_interval(torch.tensor([0.0, 1.0]), 2000, 0.95, generator) == (0.0, 1.0)


def test_interval_is_about_the_normal_one_for_many_users() -> None:
    values = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low, high = bootstrap_interval(values, 2000, 0.95, torch.Generator().manual_seed(2))
    half = 1.96 * float(values.std()) / 4000**0.5
    mean = float(values.mean())
    assert low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_empty_values_have_no_interval() -> None:
    assert bootstrap_interval(torch.zeros(0)) is None


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(torch.ones(3), confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(torch.ones(3), resamples=0)


def test_intervals_per_client_and_overall_are_seeded() -> None:
    per_user = {"ndcg@10": torch.tensor([0.0, 1.0, 0.5, 0.5, 0.2])}
    clients = torch.tensor([0, 0, 1, 1, 1])
    first = confidence_intervals(per_user, clients, 3, ["ndcg@10"], resamples=200, seed=4)
    again = confidence_intervals(per_user, clients, 3, ["ndcg@10"], resamples=200, seed=4)
    assert first == again
    assert first["clients"]["2"] == {}  # no users
    low, high = first["clients"]["1"]["ndcg@10"]
    assert 0.2 <= low <= high <= 0.5
    low, high = first["overall"]["ndcg@10"]
    assert 0.0 <= low <= 0.44 <= high <= 1.0  # the mean is 0.44
    assert (first["confidence"], first["resamples"]) == (0.95, 200)
