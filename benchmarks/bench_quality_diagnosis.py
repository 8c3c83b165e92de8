"""Why the paper's RecFormer-style encoder does not learn on MovieLens-100K, by measurement.

Short centralized runs on the leave-one-out split (all 943 users evaluated), one switch at a
time against the paper's setting (``configs/ml100k-minilm-recformer.yaml``: history as text,
item table encoded once per round, cosine / 0.05), each a separate ``fellrec fit``:

- ``paper``: the setting as shipped (1024 examples, 3 rounds, lr 5e-4);
- ``temperature``: + a learned temperature;
- ``bias``: + a learned temperature and a per-item bias (can it learn popularity?);
- ``ids``: + ID embeddings added to the item text vectors (collaborative signal);
- ``step-encoding``: targets and 256 shared negatives encoded inside the step (item-side
  gradients, no stale table), no per-item components;
- ``no-reset``: AdamW moments kept across rounds;
- ``lr-2e-3``: four times the learning rate;
- ``4096-examples``: four times the training examples;
- ``sequential``: the default recipe (item tokens, IDs, every position predicts) at the same
  budget (1024 windows of 10 items, 3 rounds), and its ablations ``sequential-no-text`` (ID
  embeddings alone) and ``sequential-no-ids`` (title embeddings alone).

Prints one Markdown table: mean training loss per round against ln(I) (scoring every item
alike) and the popularity model's loss on the same training examples, validation NDCG@10 per
round, and test NDCG@10 of the selected round, beside popularity's::

    python benchmarks/bench_quality_diagnosis.py [--variants paper,bias] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
BASE = [
    "--config",
    str(CONFIGS / "ml100k-minilm-base.yaml"),
    "--loop.strategy",
    "fellrec.federation.strategies.Centralized",
    "--data.split",
    "leave_one_out",
    "--trainer.max_epochs",
    "3",
    "--trainer.enable_progress_bar",
    "false",
]
RECFORMER = ["--config", str(CONFIGS / "ml100k-minilm-recformer.yaml")]
COMPONENTS = ["--model.item_components", "true"]
VARIANTS: dict[str, list[str]] = {
    "paper": RECFORMER,
    "temperature": [
        *RECFORMER,
        *COMPONENTS,
        "--model.items.ids",
        "false",
        "--model.items.bias",
        "false",
    ],
    "bias": [*RECFORMER, *COMPONENTS, "--model.items.ids", "false"],
    "ids": [*RECFORMER, *COMPONENTS],
    "step-encoding": [
        *RECFORMER,
        "--model.item_encoding",
        "step",
        "--model.num_negatives",
        "256",
    ],
    "no-reset": [*RECFORMER, "--model.reset_optimizer_each_round", "false"],
    "lr-2e-3": [*RECFORMER, "--model.lr", "0.002"],
    "4096-examples": [*RECFORMER, "--data.max_train_examples", "4096"],
    "sequential": ["--data.max_train_examples", "1024"],
    "sequential-no-text": ["--data.max_train_examples", "1024", "--model.items.text", "false"],
    "sequential-no-ids": ["--data.max_train_examples", "1024", "--model.items.ids", "false"],
}


def popularity_loss(data_dir: Path, cache: Path) -> tuple[float, float]:
    """Cross-entropy of the popularity model on the paper setting's training examples, ln(I)."""
    from fellrec.data.pipeline import DatasetSettings, PipelineSettings, load_federated_data

    settings = PipelineSettings(
        dataset=DatasetSettings(format="recbole", path=str(data_dir)),
        split="leave_one_out",
        valid_fraction=0.1,
        test_fraction=0.1,
        history_length=10,
        max_train_examples=1024,
        num_clients=5,
        partition="kmeans",
        partition_attribute=None,
        dirichlet_concentration=0.5,
        seed=0,
    )
    data = load_federated_data(settings, cache)
    counts = np.bincount(
        np.concatenate(data.split.train_sequences), minlength=data.dataset.num_items
    ).astype(np.float64)
    probabilities = (counts + 1) / (counts + 1).sum()  # add-one: no item has probability 0
    loss = float(-np.log(probabilities[data.examples.targets]).mean())
    return loss, math.log(data.dataset.num_items)


def run(name: str, extra: list[str], data_dir: Path, output: Path) -> tuple[Path, float | None]:
    """Fit one variant (unless it finished before); its directory and minutes."""
    directory = output / name
    if (directory / "results.json").is_file():
        timing = directory / "minutes.txt"
        return directory, float(timing.read_text()) if timing.is_file() else None
    args = [*BASE, *extra, "--data.dataset.format", "recbole"]
    args += ["--data.dataset.path", str(data_dir), "--data.cache_dir", str(output / "cache")]
    args += ["--trainer.default_root_dir", str(directory)]
    args += ["--checkpoint.dirpath", str(directory / "checkpoints")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log = output / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "fellrec", "fit", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed, see {log}:\n{log.read_text()[-3000:]}")
    minutes = (time.perf_counter() - started) / 60
    (directory / "minutes.txt").write_text(f"{minutes:.2f}")
    print(f"{name}: {minutes:.1f} min", flush=True)
    return directory, minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", type=Path, default=Path("runs/quality-diagnosis"))
    parser.add_argument("--data", type=Path, default=None, help="ml-100k RecBole directory")
    options = parser.parse_args()
    names = [n for n in options.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if options.data is None:
        from fellrec.data.fetch import fetch_ml100k

        data_dir = fetch_ml100k(options.output / "data")
    else:
        data_dir = options.data
    pop_loss, uniform_loss = popularity_loss(data_dir, options.output / "cache")
    lines = [
        f"Training loss references: scoring every item alike ln(I) = {uniform_loss:.2f}; the "
        f"popularity model (add-one) on the same examples {pop_loss:.2f}.",
        "",
        "| variant | train loss per round | val NDCG@10 per round | best round | test NDCG@10 |"
        " popularity test NDCG@10 | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        directory, minutes = run(name, VARIANTS[name], data_dir, options.output)
        results = json.loads((directory / "results.json").read_text())
        losses = ", ".join(f"{h['train_loss'][0]:.2f}" for h in results["history"])
        val = ", ".join(f"{h['val']['overall']['ndcg@10']:.4f}" for h in results["history"])
        lines.append(
            f"| {name} | {losses} | {val} | {results['best_round']} | "
            f"{results['overall']['ndcg@10']:.4f} | "
            f"{results['popularity']['overall']['ndcg@10']:.4f} | "
            f"{'-' if minutes is None else f'{minutes:.1f}'} |"
        )
    print("\n".join(lines))
    (options.output / "diagnosis.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
