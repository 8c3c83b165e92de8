"""The federated progress bar: round in the description, the client being trained in the postfix."""

from __future__ import annotations

import re

import lightning as L
import torch

from fellrec.training.batches.batch import TrainBatch
from fellrec.training.rounds.progress import FederatedProgressBar, batch_client, round_description


def test_round_description_matches_the_log_and_shows_progress():
    assert round_description(0, 5) == "round 0 (1/5)"
    assert round_description(1, 5) == "round 1 (2/5)"
    assert round_description(2, None) == "round 2"
    assert round_description(2, -1) == "round 2"  # max_epochs=-1: unbounded


def _train_batch(client: int) -> TrainBatch:
    """A one-row training batch of ``client``; its histories are the toy layer's input."""
    return TrainBatch(
        client=client,
        round=0,
        histories=torch.ones(1, 2),
        targets=torch.zeros(1, dtype=torch.long),
        users=torch.zeros(1, dtype=torch.long),
        loss_scale=1.0,
        examples=1,
        client_start=False,
        step_end=True,
    )


def test_batch_client_reads_the_batch_tag():
    assert batch_client(_train_batch(3)) == 3
    assert batch_client({"client": 1}) is None  # only a TrainBatch names its client
    assert batch_client(torch.zeros(2)) is None


class ClientBatches(L.LightningModule):
    """Two clients' batches per round, client-major, as the federated data module yields them."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, int]] = []

    def train_dataloader(self):
        batches = [_train_batch(c) for c in (0, 0, 1, 1)]
        return torch.utils.data.DataLoader(batches, batch_size=None)  # ready-made batches

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch.client))
        return self.layer(batch.histories).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_bar_shows_round_and_client(capsys, tmp_path):
    bar = FederatedProgressBar()
    shown = []

    class Spy(L.Callback):
        """Reads the bar as the user sees it, after each batch."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            progress = bar.train_progress_bar
            shown.append((progress.desc.removesuffix(": "), progress.postfix))

    module = ClientBatches()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[bar, Spy()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert [desc for desc, _ in shown] == ["round 0 (1/2)"] * 4 + ["round 1 (2/2)"] * 4
    clients = [postfix.split("client=")[1].split(",")[0] for _, postfix in shown]
    assert clients == ["0", "0", "1", "1"] * 2
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "round 1 (2/2)" in printed and "client=1" in printed
    # A new round never shows the last round's client.
    assert not re.search(r"round 1 \(2/2\):\s+0%[^\]]*client=1\]", printed)
