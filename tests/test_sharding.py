"""Sharded tensors as fellrec reads and writes them, on a one-process gloo group (CPU).

The two-process claims (sharded = one process) are in ``test_sharded_server.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from fellrec.models.sharding import (
    copy_into,
    full_tensor,
    is_sharded,
    local_parameter_bytes,
    local_part,
    shard_blocks,
)
from fellrec.training.host.client_optimization import average_gradients, client_param_groups


@pytest.fixture()
def one_process_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", rank=0, world_size=1, store=store)
    yield
    dist.destroy_process_group()


def sharded_linear() -> nn.Linear:
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    layer = nn.Linear(4, 6)
    shard_blocks([layer], init_device_mesh("cpu", (1,)))
    return layer


def test_a_sharded_parameter_is_read_and_written_whole(one_process_group):
    layer = sharded_linear()
    assert is_sharded(layer.weight) and not is_sharded(torch.zeros(1))
    value = torch.arange(24, dtype=torch.float64).view(6, 4)
    copy_into(layer.weight, value)  # casts to the parameter's dtype
    assert torch.equal(full_tensor(layer.weight.detach()), value.float())
    assert torch.equal(local_part(value, layer.weight), value.float())  # one process: all rows
    plain = torch.zeros(2)
    copy_into(plain, torch.tensor([1.0, 2.0]))
    assert plain.tolist() == [1.0, 2.0] and full_tensor(plain) is plain
    assert local_parameter_bytes([layer]) == (24 + 6) * 4


def test_sharded_adapter_parameters_get_their_own_optimizer_group(one_process_group):
    layer = sharded_linear()
    plain = nn.Parameter(torch.zeros(3))
    items = nn.Parameter(torch.zeros(2))
    groups = client_param_groups(
        ["a.weight", "a.bias", "b", "items.bias"],
        [layer.weight, layer.bias, plain, items],
        lr=0.1,
        item_lr=0.5,
    )
    assert [len(g["params"]) for g in groups] == [1, 2, 1]
    assert groups[0]["params"][0] is plain and all(is_sharded(p) for p in groups[1]["params"])
    assert [g["base_lr"] for g in groups] == [0.1, 0.1, 0.5]
    torch.optim.AdamW(groups, foreach=True)  # no group mixes DTensors and plain tensors


def test_averaging_leaves_sharded_gradients_to_fsdp(one_process_group):
    layer = sharded_linear()
    plain = nn.Parameter(torch.zeros(2))
    layer(torch.ones(1, 4)).sum().backward()
    plain.grad = torch.tensor([2.0, 4.0])
    before = full_tensor(layer.weight.grad).clone()
    sums = []

    def reduce_sum(flat: torch.Tensor) -> torch.Tensor:
        sums.append(flat.numel())
        return flat * 2  # two processes with the same gradients

    assert not average_gradients([layer.weight, plain], False, 2, reduce_sum)
    assert sums == [3]  # the plain gradient and the divergence flag only
    assert plain.grad.tolist() == [2.0, 4.0]
    assert torch.equal(full_tensor(layer.weight.grad), before)
