"""A client's in-round learning-rate schedule, against hand-computed rates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fellrec.training.host.client_optimization import (
    RoundSchedule,
    client_param_groups,
    schedule_factor,
)


def test_warmup_then_linear_and_cosine_decay() -> None:
    # Warm-up over 2 steps: 1/2, then 1.
    assert [schedule_factor(s, 5, 2, "none") for s in range(3)] == [0.5, 1.0, 1.0]
    # Linear over 5 steps: progress s / 4.
    assert [schedule_factor(s, 5, 0, "linear") for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert schedule_factor(2, 5, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule_factor(0, 1, 0, "linear") == 1.0  # a one-step round is not decayed


def _optimizer(item_lr: float = 0.01) -> torch.optim.Optimizer:
    adapter, items = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    groups = [
        {"params": [adapter], "lr": 0.1, "base_lr": 0.1},
        {"params": [items], "lr": item_lr, "base_lr": item_lr},
    ]
    return torch.optim.AdamW(groups)


def _step(schedule: RoundSchedule, slot: int, optimizer: torch.optim.Optimizer) -> list[float]:
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    schedule.step(slot, optimizer)
    return [group["lr"] for group in optimizer.param_groups]


def test_a_round_scales_each_groups_base_rate_and_then_follows_the_schedule() -> None:
    schedule = RoundSchedule(
        warmup_steps=0, lr_decay="linear", reset_optimizer_each_round=True, lr=1
    )
    first, second = _optimizer(), _optimizer()
    schedule.start([first, second], lr_scales=[2.0, 0.5], steps_total={0: 3, 1: 1})
    assert [g["lr"] for g in first.param_groups] == [0.2, 0.02]
    assert [g["lr"] for g in second.param_groups] == [0.05, 0.005]
    # Slot 0 has 3 steps: factors 1, 1/2, 0 of its round rates.
    assert _step(schedule, 0, first) == [0.2, 0.02]
    assert _step(schedule, 0, first) == [0.1, 0.01]
    assert _step(schedule, 0, first) == [0.0, 0.0]
    assert _step(schedule, 1, second) == [0.05, 0.005]  # one step: not decayed
    assert schedule.steps_done == {0: 3, 1: 1}


def test_the_next_round_starts_again_and_clears_the_moments_when_asked() -> None:
    for reset in (True, False):
        schedule = RoundSchedule(0, "none", reset_optimizer_each_round=reset, lr=1.0)
        optimizer = _optimizer()
        schedule.start([optimizer], [1.0], {0: 1})
        _step(schedule, 0, optimizer)
        assert len(optimizer.state) == 2
        schedule.start([optimizer], [3.0], {0: 1})
        assert schedule.steps_done == {}
        assert len(optimizer.state) == (0 if reset else 2)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.3, 0.03])


def test_invalid_schedule_settings_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"model\.lr_decay must be one of"):
        RoundSchedule(0, "step", True, lr=1e-3)
    with pytest.raises(ValueError, match=r"model\.lr must be > 0"):
        RoundSchedule(0, "none", True, lr=0.0)


def test_item_weight_decay_gives_the_id_rows_a_group_of_their_own() -> None:
    names = [
        "lora_A",
        "items.id_embedding",
        "items.id_projection.weight",
        "items.bias",
        "items.log_scale",
    ]
    params = [nn.Parameter(torch.ones(2)) for _ in names]
    merged = client_param_groups(names, params, lr=0.1, item_lr=0.5)
    assert [len(g["params"]) for g in merged] == [1, 4]  # as before the switch
    assert all("weight_decay" not in g for g in merged)
    groups = client_param_groups(names, params, lr=0.1, item_lr=0.5, id_weight_decay=2.0)
    assert [g["params"] for g in groups] == [params[:1], params[1:3], params[3:]]
    assert [g["base_lr"] for g in groups] == [0.1, 0.5, 0.5]
    assert [g.get("weight_decay") for g in groups] == [None, 2.0, None]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    for p in params:
        p.grad = torch.zeros(2)
    optimizer.step()
    # Decoupled decay only: p <- p * (1 - lr * wd) on the ID rows, nothing elsewhere.
    assert [p.tolist() for p in params] == [
        [1.0, 1.0],
        [0.0, 0.0],
        [0.0, 0.0],
        [1.0, 1.0],
        [1.0, 1.0],
    ]
