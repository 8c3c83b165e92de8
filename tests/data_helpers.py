"""Small datasets built by hand for the data-stage tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fellrec.data.schema import IndexedDataset

if TYPE_CHECKING:
    from fellrec.data.pipeline import DatasetSettings, PipelineSettings
    from fellrec.training.batches.datamodule import FederatedDataModule


def chronological_dataset(
    pairs: list[tuple[int, int]], num_users: int, num_items: int
) -> IndexedDataset:
    """A dataset from (user, item) pairs in chronological order (timestamps 10, 20, ...)."""
    u, i = (np.array(col, dtype=np.int64) for col in zip(*pairs, strict=True))
    return IndexedDataset(
        name="tiny",
        user_ids=np.array([f"u{k}" for k in range(num_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(num_items)], dtype=object),
        users=u,
        items=i,
        timestamps=np.arange(1, len(u) + 1, dtype=np.int64) * 10,
        titles=[f"t{k}" for k in range(num_items)],
        categories=[() for _ in range(num_items)],
    )


def small_datamodule(cache_dir: Path, **options: Any) -> FederatedDataModule:
    """A set-up data module: 40 synthetic users, 60 items, leave-one-out, 2 iid clients."""
    from fellrec.data.pipeline import DatasetSettings
    from fellrec.training.batches.datamodule import FederatedDataModule

    data = FederatedDataModule(
        dataset=DatasetSettings(format="synthetic", options={"num_users": 40, "num_items": 60}),
        split="leave_one_out",
        num_clients=2,
        partition="iid",
        history_length=4,
        cache_dir=str(cache_dir),
        **options,
    )
    data.setup()
    return data


def leave_one_out_settings(dataset: DatasetSettings, **changes: Any) -> PipelineSettings:
    """Pipeline settings of ``dataset``: leave-one-out, history 4, 2 iid clients, seed 0."""
    from fellrec.data.pipeline import PipelineSettings

    settings: dict[str, Any] = {
        "dataset": dataset,
        "split": "leave_one_out",
        "valid_fraction": 0.1,
        "test_fraction": 0.1,
        "history_length": 4,
        "max_train_examples": None,
        "num_clients": 2,
        "partition": "iid",
        "partition_attribute": None,
        "dirichlet_concentration": 0.5,
        "seed": 0,
    }
    return PipelineSettings(**{**settings, **changes})
