"""BIGRec's popularity term (``model.prompt.popularity_gamma``), against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.models.popularity_grounding import (
    row_standardized,
    standardized_log_popularity,
    with_popularity,
)
from fellrec.models.prompts import MAX_POPULARITY_GAMMA, PromptSettings


def test_log_counts_are_standardized_over_the_catalog():
    # log(1 + counts) = 0, 1, 2: mean 1, (unbiased) std 1.
    counts = torch.tensor([0.0, math.e - 1, math.e**2 - 1])
    values = standardized_log_popularity(counts).tolist()
    assert values == pytest.approx([-1.0, 0.0, 1.0], abs=1e-7)  # float32 counts


@pytest.mark.parametrize("counts", [[0, 0, 0], [4, 4, 4, 4], [7]])
def test_a_catalog_of_equal_counts_carries_no_popularity(counts):
    values = standardized_log_popularity(torch.tensor(counts))
    assert values.tolist() == [0.0] * len(counts)


def test_rows_are_standardized_over_their_finite_entries():
    scores = torch.tensor([[1.0, 3.0, float("-inf")], [2.0, 2.0, 2.0]])
    out = row_standardized(scores)
    # Row 0: mean 2, population std 1 over the two finite entries; -inf stays.
    assert out[0, :2].tolist() == [-1.0, 1.0] and out[0, 2] == float("-inf")
    assert out[1].tolist() == [0.0, 0.0, 0.0]  # no spread: all at the mean


def test_free_decoding_adds_gamma_times_the_popularity():
    scores = torch.tensor([[-3.0, -1.0, -2.0]])  # standardized: -1.2247, 1.2247, 0
    popularity = torch.tensor([1.0, -1.0, 0.0])
    spread = math.sqrt(2 / 3)
    expected = [-1 / spread + 2.0, 1 / spread - 2.0, 0.0]
    assert with_popularity(scores, popularity, 2.0, False)[0].tolist() == pytest.approx(expected)
    # gamma 0 keeps the grounding's order.
    assert with_popularity(scores, popularity, 0.0, False).argsort().tolist() == [[0, 2, 1]]


def test_constrained_beams_stay_on_top_and_the_term_orders_the_rest():
    # Beams scored 2 (first) and 1 (second); the others are distances <= 0.
    scores = torch.tensor([[1.0, -0.5, 2.0, -0.1, float("-inf")]])
    popularity = torch.tensor([0.0, 3.0, -5.0, -3.0, 9.0])
    out = with_popularity(scores, popularity, 1.0, True)[0]
    assert out[4] == float("-inf")  # excluded stays excluded, however popular
    # The rest: distances -0.5 and -0.1 standardize to -1 and 1; plus 3 and -3.
    assert out[1].item() == pytest.approx(2.0) and out[3].item() == pytest.approx(-2.0)
    # The beams: their scores plus the best other item's (2).
    assert out[2].item() == pytest.approx(4.0) and out[0].item() == pytest.approx(3.0)
    assert out.argsort(descending=True).tolist()[:4] == [2, 0, 1, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_beams_stay_on_top_whatever_gamma_and_dtype(dtype):
    scores = torch.tensor([[-0.3, 2.0, -0.2, 1.0, -0.9, -0.4]], dtype=dtype)
    popularity = torch.tensor([3.5, -1.0, 0.5, -2.0, 1.0, 0.0])
    for gamma in (0.0, 1.0, MAX_POPULARITY_GAMMA):
        out = with_popularity(scores, popularity, gamma, True)[0]
        assert out.dtype == (torch.float32 if dtype != torch.float32 else dtype)
        order = out.argsort(descending=True).tolist()
        assert order[:2] == [1, 3] and len(set(out.tolist())) == 6


@pytest.mark.parametrize("gamma", [-0.1, float("nan"), float("inf"), 1000.5])
def test_a_gamma_below_zero_or_not_finite_is_refused_by_name(gamma):
    with pytest.raises(ValueError, match=r"model\.prompt\.popularity_gamma"):
        PromptSettings(popularity_gamma=gamma).validate()
