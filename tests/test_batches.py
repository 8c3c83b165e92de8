"""Typed batches: what the data module tells the model about each batch, and their device moves."""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from data_helpers import small_datamodule
from fellrec.training.batches.batch import EvalBatch, TrainBatch
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.batches.round_batching import RoundBatching, UserSampling


def _as_process(data: FederatedDataModule, rank: int, world: int, epoch: int = 0) -> None:
    """Serve ``data`` as process ``rank`` of ``world`` would (the attributes it reads)."""
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=epoch)


def _same(left: TrainBatch | EvalBatch, right: TrainBatch | EvalBatch) -> bool:
    """Field by field: tensors equal in value, everything else equal."""
    if type(left) is not type(right):
        return False
    for field in fields(left):
        a, b = getattr(left, field.name), getattr(right, field.name)
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        if not same:
            return False
    return True


def _train_batch(client: int = 0) -> TrainBatch:
    return TrainBatch(
        client=client,
        round=2,
        histories=torch.tensor([[-1, 4, 5]]),
        targets=torch.tensor([7]),
        users=torch.tensor([3]),
        loss_scale=0.5,
        examples=1,
        client_start=True,
        step_end=False,
    )


def test_a_process_without_rows_gets_a_batch_that_weighs_nothing(tmp_path):
    """One row per global batch, two processes: process 0 trains it, process 1 only keeps step."""
    data = small_datamodule(tmp_path, batch_size=1)
    batches = {}
    for rank in (0, 1):
        _as_process(data, rank, 2)
        batches[rank] = data._train_batches()
    assert len(batches[0]) == len(batches[1]) == len(data.round_plan(0)) > 0
    for own, other in zip(batches[0], batches[1], strict=True):
        assert (own.loss_scale, own.examples) == (2.0, 1)  # world 2 / 1 example in the step
        assert (other.loss_scale, other.examples) == (0.0, 0)
        assert other.targets.numel() == 1  # it still runs the model (sharded collectives)
        assert own.client == other.client and own.step_end == other.step_end


def test_a_single_process_averages_each_step_over_its_examples(tmp_path):
    data = small_datamodule(tmp_path, batch_size=4, accumulate_grad_batches=2)
    _as_process(data, 0, 1)
    batches = data._train_batches()
    step: list[TrainBatch] = []
    for batch in batches:
        step.append(batch)
        if batch.step_end:
            rows = sum(len(b.targets) for b in step)
            assert all(b.loss_scale == 1 / rows for b in step)  # world 1 / the step's examples
            assert [b.examples for b in step] == [len(b.targets) for b in step]
            step = []
    assert not step and any(b.loss_scale != batches[0].loss_scale for b in batches)


def test_evaluation_rows_of_another_process_are_scored_but_not_counted(tmp_path):
    data = small_datamodule(tmp_path, eval_batch_size=1)
    _as_process(data, 1, 2)
    batches = data._eval_batches(data.data.split.test)
    assert batches and all(isinstance(b, EvalBatch) for b in batches)
    assert all(not b.counted and b.users.numel() == 1 for b in batches)
    _as_process(data, 0, 2)
    assert all(b.counted for b in data._eval_batches(data.data.split.test))


def test_a_set_round_is_served_instead_of_the_epoch(tmp_path):
    data = small_datamodule(tmp_path)
    _as_process(data, 0, 1, epoch=0)
    data.set_round_batching(replace(data.round_batching, round=3))
    batches = data._train_batches()
    assert {b.round for b in batches} == {3}
    planned = data.round_plan(3)
    assert [b.targets.tolist() for b in batches] == [
        data.data.examples.targets[p.indices].tolist() for p in planned
    ]


def test_round_batching_is_valid_by_construction_and_set_only_whole():
    with pytest.raises(ValueError, match="round to batch must be >= 0"):
        RoundBatching(round=-1)
    with pytest.raises(ValueError, match="expected_users >= 1"):
        UserSampling(0, 4, secret=1)
    assert "12345" not in repr(RoundBatching(user_sampling=UserSampling(2, 4, secret=12345)))
    data = FederatedDataModule(num_clients=2)
    with pytest.raises(TypeError, match="expected a RoundBatching, got tuple"):
        data.set_round_batching((2, 4, 12345))  # type: ignore[arg-type]
    assert data.round_batching == RoundBatching()  # unchanged by the refused value


def test_a_batch_moves_to_a_device_as_the_same_type():
    batch = _train_batch()
    moved = move_data_to_device(batch, torch.device("meta"))
    assert type(moved) is TrainBatch and moved is not batch
    assert all(t.device.type == "meta" for t in (moved.histories, moved.targets, moved.users))
    assert _same(
        replace(moved, histories=batch.histories, targets=batch.targets, users=batch.users), batch
    )
    assert not _same(replace(batch, loss_scale=0.0), batch)
    assert batch.histories.device.type == "cpu"  # the loader's batch is left as it was
    evaluation = EvalBatch(0, *(torch.zeros(1, 2, dtype=torch.long) for _ in range(4)), True)
    assert type(move_data_to_device(evaluation, torch.device("meta"))) is EvalBatch


def test_lightning_hands_the_step_the_batch_it_transferred(tmp_path):
    """A real trainer: the batch passes the device-transfer hook and reaches the step typed."""

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.transferred: list[tuple[type, type]] = []
            self.stepped: list[TrainBatch] = []

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
            self.transferred.append((type(batch), type(moved)))
            return moved

        def train_dataloader(self):
            return torch.utils.data.DataLoader([_train_batch(0), _train_batch(1)], batch_size=None)

        def training_step(self, batch, batch_idx):
            self.stepped.append(batch)
            return self.layer(batch.histories.float()).sum() * batch.loss_scale

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Recorder()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert module.transferred == [(TrainBatch, TrainBatch)] * 2
    assert [b.client for b in module.stepped] == [0, 1]
    assert all(_same(b, _train_batch(b.client)) for b in module.stepped)
