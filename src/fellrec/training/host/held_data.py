"""What a host knows of the data it holds: the digest its secrets are bound to, new items.

Both are read once when the host is built (:meth:`FederatedModule.build
<fellrec.training.host.federated_module.FederatedModule.build>`), from its data module and the
clients it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.dp.host_secrets import data_digest


def held_data_digest(datamodule: FederatedDataModule, held_clients: Sequence[int]) -> bytes:
    """A digest of every stage's data of the held clients (what their noise protects).

    Training users' items, and each held validation and test user's id, history and targets:
    a deployed node's secrets change whenever any of them does.
    """
    data = datamodule.data
    arrays = [items for c in held_clients for items in datamodule.training_user_items(c)]
    held = np.isin(data.assignment, list(held_clients))
    for period in (data.split.valid, data.split.test):
        for user, history, targets in zip(
            period.users, period.histories, period.targets, strict=True
        ):
            if held[user]:
                arrays += [np.asarray([user]), history, targets]
    return data_digest(arrays)


def new_items_mask(datamodule: FederatedDataModule) -> torch.Tensor | None:
    """Bool ``(I,)`` of the items held out of training (``data.new_items``), or None."""
    held = datamodule.data.split.new_items
    if len(held) == 0:
        return None
    mask = torch.zeros(datamodule.data.dataset.num_items, dtype=torch.bool)
    mask[torch.as_tensor(held, dtype=torch.long)] = True
    return mask
