"""Bootstrap confidence intervals against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from fellrec.metrics.balance import balance_statistics, spread_statistics
from fellrec.metrics.bootstrap import (
    balance_intervals,
    bootstrap_interval,
    bootstrap_intervals,
    confidence_intervals,
)


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


def test_columns_share_one_draw_and_each_equals_its_own_interval() -> None:
    values = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0], [0.25, 0.5]])
    both = bootstrap_intervals(values, generator=torch.Generator().manual_seed(11))
    for column in range(2):
        alone = bootstrap_interval(values[:, column], generator=torch.Generator().manual_seed(11))
        assert both[column] == alone
    assert bootstrap_intervals(torch.zeros(0, 3)) is None
    with pytest.raises(ValueError, match=r"\(U, M\)"):
        bootstrap_intervals(torch.zeros(3))


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


def test_balance_intervals_of_constant_clients_are_the_statistics_themselves() -> None:
    values = torch.tensor([[0.2], [0.2], [0.6], [0.6], [0.6]], dtype=torch.float64)
    clients = torch.tensor([0, 0, 1, 1, 1])
    (spread,) = balance_intervals(values, clients, 3, resamples=50)  # client 2 has no users
    for name, value in balance_statistics([0.2, 0.6]).items():
        assert spread[name] == pytest.approx((value, value)), name


def test_balance_intervals_resample_within_each_client() -> None:
    # Client 0's resampled mean is 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4); client 1 stays 1:
    # the worst client is client 0's mean and the gap 1 minus it, so both intervals are [0, 1];
    # the best client is always 1.
    values = torch.tensor([[0.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    clients = torch.tensor([0, 0, 1, 1])
    (spread,) = balance_intervals(values, clients, 2, resamples=2000, seed=3)
    assert spread["min"] == (0.0, 1.0)
    assert spread["gap"] == (0.0, 1.0)
    assert spread["max"] == (1.0, 1.0)
    assert spread["mean"] == (0.5, 1.0)  # (0 + 1) / 2 ... (1 + 1) / 2


def test_spread_statistics_of_many_sets_equal_balance_statistics_of_each() -> None:
    rows = torch.rand(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rows[2] = 0.0  # all equal at zero: Gini 0, Jain 1
    batched = spread_statistics(rows)
    for index, row in enumerate(rows):
        for name, value in balance_statistics(row).items():
            assert float(batched[name][index]) == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_confidence_intervals_cover_the_balance_of_the_balance_metrics() -> None:
    generator = torch.Generator().manual_seed(6)
    per_user = {
        name: torch.rand(60, generator=generator, dtype=torch.float64)
        for name in ("ndcg@10", "recall@10", "mrr@10")
    }
    clients = torch.arange(60) % 3
    intervals = confidence_intervals(per_user, clients, 3, list(per_user), resamples=300)
    assert set(intervals["balance"]) == {"ndcg@10", "recall@10"}  # mrr has no balance summary
    for metric, stats in intervals["balance"].items():
        means = [float(per_user[metric][clients == c].mean()) for c in range(3)]
        observed = balance_statistics(means)
        assert set(stats) == set(observed)
        for name in ("mean", "min", "max", "std"):
            low, high = stats[name]
            assert low <= observed[name] <= high, (metric, name)


def test_a_client_without_users_between_others_is_skipped_not_the_end() -> None:
    values = torch.tensor([[0.2], [0.2], [0.6], [0.6]], dtype=torch.float64)
    clients = torch.tensor([0, 0, 2, 2])  # client 1 has no users
    (spread,) = balance_intervals(values, clients, 3, resamples=1)  # one resample is enough
    for name, value in balance_statistics([0.2, 0.6]).items():
        assert spread[name] == pytest.approx((value, value)), name
    assert balance_intervals(values, clients, 0, resamples=5) == [{}]


def test_interval_arguments_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match=r"values must have shape \(U,\), got \(1, 3\)"):
        bootstrap_interval(torch.ones(1, 3))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(torch.ones(3), confidence=0.0)
    assert bootstrap_interval(torch.ones(3), resamples=1) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match=r"values must be \(U, M\) and clients \(U,\), got \(4,\)"):
        balance_intervals(torch.ones(4), torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"got \(4, 1\) and \(3,\)"):
        balance_intervals(torch.ones(4, 1), torch.zeros(3), 1)
    with pytest.raises(ValueError, match="resamples must be >= 1, got 0"):
        balance_intervals(torch.ones(4, 1), torch.zeros(4), 1, resamples=0)


def test_the_interval_is_the_2_5_and_97_5_percentiles_of_the_resampled_means() -> None:
    values = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.6, 0.9, 1.0], dtype=torch.float64)
    low, high = bootstrap_interval(values, 400, 0.95, torch.Generator().manual_seed(5)) or (0, 0)
    # By hand: the same 400 draws, each resample's mean, then the two percentiles.
    draws = torch.randint(7, (400, 7), generator=torch.Generator().manual_seed(5))
    means = values[draws].mean(dim=1)
    expected = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (low, high) == pytest.approx((float(expected[0]), float(expected[1])), abs=1e-12)
    # A 90% interval is the 5th and 95th percentiles of the same means: strictly inside.
    narrow = bootstrap_interval(values, 400, 0.9, torch.Generator().manual_seed(5)) or (0, 0)
    assert low < narrow[0] <= narrow[1] < high


def test_intervals_do_not_depend_on_the_global_random_state() -> None:
    per_user = {"ndcg@10": torch.tensor([0.0, 1.0, 0.5, 0.5, 0.2, 0.9])}
    clients = torch.tensor([0, 0, 1, 1, 1, 0])
    torch.manual_seed(1)
    first = confidence_intervals(per_user, clients, 2, ["ndcg@10"], resamples=100, seed=4)
    torch.manual_seed(2)
    again = confidence_intervals(per_user, clients, 2, ["ndcg@10"], resamples=100, seed=4)
    assert first == again and first["balance"]["ndcg@10"]
