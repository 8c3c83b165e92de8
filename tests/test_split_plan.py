from __future__ import annotations

import pytest

from fellrec.models.split_plan import SplitPlan, plan_split


def test_default_small_split() -> None:
    plan = plan_split(4, 1, 1)
    assert plan == SplitPlan(4, 1, 1, range(0, 1), range(1, 3), range(3, 4))
    assert list(plan.front) == [0]
    assert list(plan.middle) == [1, 2]
    assert list(plan.back) == [3]


def test_reference_llama_split() -> None:
    # The reference cut LLaMA-7B (32 blocks) after 20 client blocks; keep 1 at the back.
    plan = plan_split(32, 20, 1)
    assert list(plan.front) == list(range(20))
    assert list(plan.middle) == list(range(20, 31))
    assert list(plan.back) == [31]


@pytest.mark.parametrize(
    ("layers", "k_front", "k_back", "front", "middle", "back"),
    [
        (4, 0, 0, [], [0, 1, 2, 3], []),
        (4, 0, 3, [], [0], [1, 2, 3]),
        (4, 3, 0, [0, 1, 2], [3], []),
        (4, 2, 1, [0, 1], [2], [3]),
        (1, 0, 0, [], [0], []),
    ],
)
def test_ranges_partition_the_blocks(
    layers: int, k_front: int, k_back: int, front: list[int], middle: list[int], back: list[int]
) -> None:
    plan = plan_split(layers, k_front, k_back)
    assert (list(plan.front), list(plan.middle), list(plan.back)) == (front, middle, back)
    assert list(plan.front) + list(plan.middle) + list(plan.back) == list(range(layers))


@pytest.mark.parametrize(
    ("layers", "k_front", "k_back", "match"),
    [
        (4, -1, 1, r"model\.k_front must be >= 0"),
        (4, 1, -2, r"model\.k_back must be >= 0"),
        (4, 2, 2, r"model\.k_front \+ model\.k_back must be <= 3.*model\.split_execution: false"),
        (4, 4, 0, r"model\.k_front \+ model\.k_back must be <= 3"),
        (1, 0, 1, r"must be <= 0"),
        (0, 0, 0, r"at least 1"),
    ],
)
def test_invalid_plans(layers: int, k_front: int, k_back: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_split(layers, k_front, k_back)
