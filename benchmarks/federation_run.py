"""Shared set-up of the benchmarks that run a real federation (imported, not run).

Builds the quickstart job (``configs/quickstart.yaml``: MiniLM backbone, sequential recommender
by default, synthetic catalog, history of 5 items, 64/16 history/item tokens for the encoder,
lr 1e-3) with the Trainer API, at batch 16 unless a script asks for another (the config's was 16
until 2026-12-07 and is 64 now; the figures these scripts produced were measured at 16), laid
out like the CLI's, minus everything that is not training: no logger, no checkpoints, no
progress bar. Offline: set ``HF_HUB_OFFLINE=1`` (the packaged MiniLM needs no network).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from fellrec.data.pipeline import DatasetSettings
from fellrec.federation.strategies import STRATEGIES, Strategy
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.rounds.loop import FederatedLoop


def quiet() -> None:
    """Silence the per-run chatter of Lightning, transformers and fellrec."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "fellrec", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_rss_mib() -> float:
    """Resident set size now, in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return 0.0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_run(
    root: Path,
    *,
    strategy: str | Strategy = "fellrec",
    num_clients: int = 5,
    rounds: int = 1,
    num_users: int = 600,
    num_items: int = 400,
    max_train_examples: int | None = 1024,
    partition: str = "kmeans",
    batch_size: int = 16,
    validate: bool = True,
    backbone: str = "minilm",
    recommender: str = "sequential",
    cache_dir: Path | None = None,
    callbacks: list[Callback] | None = None,
    first_callbacks: list[Callback] | None = None,
    seed: int = 0,
) -> tuple[L.Trainer, FederatedModule, FederatedDataModule, FederatedLoop]:
    """The quickstart federation with the given size, ready for ``trainer.fit(model, data)``.

    Args:
        root: Run directory (``default_root_dir``).
        strategy: A strategy or its name (``fellrec``, ``fedavg``, ``fedprox``, ``local``,
            ``centralized``).
        num_clients: Clients (adapters).
        rounds: Federated rounds (Lightning epochs).
        num_users: Synthetic users.
        num_items: Synthetic catalog size.
        max_train_examples: Subsample of training examples (None keeps all).
        partition: ``kmeans`` (quickstart) or ``iid``.
        batch_size: Training examples per mini-batch.
        validate: Run validation after each round (False: ``limit_val_batches=0``, so the loop
            aggregates in ``on_train_epoch_end``).
        backbone: Encoder alias or directory.
        recommender: ``sequential`` (the default recipe) or ``encoder`` (the paper's
            RecFormer-style encoder).
        cache_dir: Prepared-data cache (default: ``root/cache``).
        callbacks: Extra callbacks, after the federated loop (their hooks run after its hooks).
        first_callbacks: Extra callbacks before the federated loop (their hooks run first).
        seed: Data, batch-order and adapter seed.
    """
    if isinstance(strategy, str):
        strategy = STRATEGIES[strategy]()
    L.seed_everything(seed, verbose=False)
    data = FederatedDataModule(
        dataset=DatasetSettings(
            format="synthetic", options={"num_users": num_users, "num_items": num_items}
        ),
        split="temporal",
        history_length=5,
        max_train_examples=max_train_examples,
        num_clients=num_clients,
        partition=partition,
        batch_size=batch_size,
        cache_dir=str(cache_dir or root / "cache"),
        seed=seed,
    )
    model = FederatedModule(
        backbone=backbone,
        recommender=recommender,
        lr=1e-3,
        max_history_tokens=64,
        max_item_tokens=16,
        seed=seed,
    )
    loop = FederatedLoop(strategy=strategy, write_results=False)
    options: dict[str, Any] = {} if validate else {"limit_val_batches": 0}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=rounds,
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[*(first_callbacks or []), loop, *(callbacks or [])],
        **options,
    )
    return trainer, model, data, loop
