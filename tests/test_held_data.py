"""What a host knows of the data it holds (training/host/held_data.py), and how its secrets reach
every process of a data-parallel run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from data_helpers import small_datamodule
from fellrec.models.hidden_defence import HiddenDefence
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.host.held_data import held_data_digest, new_items_mask


def test_the_digest_covers_every_stage_of_the_held_clients_and_no_other(tmp_path) -> None:
    data = small_datamodule(tmp_path)
    split, owner = data.data.split, data.data.assignment
    digests = {c: held_data_digest(data, [c]) for c in (0, 1)}
    assert digests[0] != digests[1] and held_data_digest(data, [0]) == digests[0]
    assert held_data_digest(data, [0, 1]) not in digests.values()
    # A validation target of a client-0 user: client 0's digest moves, client 1's does not.
    row = next(i for i, user in enumerate(split.valid.users) if owner[user] == 0)
    split.valid.targets[row] = split.valid.targets[row] + 1
    changed = held_data_digest(data, [0])
    assert changed != digests[0] and held_data_digest(data, [1]) == digests[1]
    # A test history of a client-1 user: client 1's digest moves.
    row = next(i for i, user in enumerate(split.test.users) if owner[user] == 1)
    split.test.histories[row] = np.asarray(split.test.histories[row][:-1])
    assert held_data_digest(data, [1]) != digests[1] and held_data_digest(data, [0]) == changed


def test_the_new_items_mask_marks_exactly_the_held_out_items(tmp_path) -> None:
    assert new_items_mask(small_datamodule(tmp_path / "all")) is None
    data = small_datamodule(tmp_path / "new", new_items=0.2)
    mask = new_items_mask(data)
    held = data.data.split.new_items
    assert mask is not None and mask.shape == (data.data.dataset.num_items,)
    assert len(held) > 0 and sorted(torch.nonzero(mask).flatten().tolist()) == sorted(held.tolist())


def test_every_secret_of_a_data_parallel_host_is_rank_zeros(tmp_path, tiny_encoder_dir) -> None:
    # Every process holds every client: unseeded noise must be drawn from rank zero's secret,
    # or the replicas would drift apart.
    data = small_datamodule(tmp_path)
    sent: list[int] = []

    def broadcast(value: int, src: int) -> int:
        assert src == 0
        sent.append(value)
        return 12345

    module = FederatedModule(
        backbone=str(tiny_encoder_dir),
        recommender="sequential",
        hidden_defence=HiddenDefence(clip=1.0, noise=0.1),
    )
    module._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(broadcast=broadcast))
    module.build(data)
    assert len(sent) == 1 and module.hidden_noise is not None
    assert module.hidden_noise.base == 12345
