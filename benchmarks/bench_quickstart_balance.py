"""Does FELLRec balance the quickstart's clients, and is the change across rounds more than noise?

Runs the quickstart (``configs/quickstart.yaml``) with FELLRec, FedAvg and Local training over
several data seeds (each seed draws other users into other clients and another batch order), each
``fellrec fit`` in its own process and run directory, then prints, per strategy and seed:

- the validation balance of NDCG@10 per round (std, worst client, Jain's index);
- at test: std across clients, coefficient of variation (std / mean: the spread relative to the
  level, comparable between models of different quality), Gini and Jain's index, for the run and
  for the popularity baseline of the same clients;
- the sampling noise of one client's NDCG@10: the mean width of the per-client 95% bootstrap
  intervals over test users (from ``results.json``'s ``ci``).

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_quickstart_balance.py \\
        --seeds 0,1,2 --rounds 5 --output /tmp/fellrec-balance

Finished runs are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "quickstart.yaml"
STRATEGIES = {
    "fellrec": "fellrec.federation.strategies.FELLRec",
    "fedavg": "fellrec.federation.strategies.FedAvg",
    "local": "fellrec.federation.strategies.Local",
}
METRIC = "ndcg@10"


def run(strategy: str, seed: int, rounds: int, root: Path) -> dict[str, Any]:
    """The results of one quickstart fit (reused when already finished)."""
    directory = root / f"{strategy}-seed{seed}"
    results = directory / "results.json"
    if not results.exists():
        command = [
            sys.executable,
            "-m",
            "fellrec",
            "fit",
            "--config",
            str(CONFIG),
            "--loop.strategy",
            STRATEGIES[strategy],
            "--data.seed",
            str(seed),
            "--seed_everything",
            str(seed),
            "--trainer.max_epochs",
            str(rounds),
            "--trainer.default_root_dir",
            str(directory),
            "--trainer.enable_progress_bar",
            "false",
        ]
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "log.txt").open("w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(results.read_text())


def test_balance(summary: dict[str, Any]) -> dict[str, float]:
    """std, coefficient of variation, Gini and Jain of a test summary's NDCG@10."""
    balance = summary["balance"][METRIC]
    return {
        "mean": balance["mean"],
        "std": balance["std"],
        "cv": balance["std"] / balance["mean"] if balance["mean"] else float("nan"),
        "gini": balance["gini"],
        "jain": balance["jain"],
    }


def client_interval_width(results: dict[str, Any]) -> float:
    """Mean width of the clients' 95% bootstrap intervals of NDCG@10 over test users."""
    clients = (results.get("ci") or {}).get("clients") or {}
    widths = [c[METRIC][1] - c[METRIC][0] for c in clients.values() if METRIC in c]
    return statistics.fmean(widths) if widths else float("nan")


def main() -> None:
    """Run the grid and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--output", type=Path, default=Path("/tmp/fellrec-balance"))
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = [int(s) for s in options.seeds.split(",")]
    strategies = options.strategies.split(",")
    print(f"quickstart, {options.rounds} rounds, seeds {seeds}; validation {METRIC} per round:")
    print("strategy  seed  round  val mean  val std  val worst  val jain")
    grid = {}
    for strategy in strategies:
        for seed in seeds:
            results = run(strategy, seed, options.rounds, options.output)
            grid[strategy, seed] = results
            for record in results["history"]:
                balance = record["val"]["balance"][METRIC]
                print(
                    f"{strategy:8}  {seed:4}  {record['round']:5}  {balance['mean']:8.4f}  "
                    f"{balance['std']:7.4f}  {balance['min']:9.4f}  {balance['jain']:8.4f}"
                )
    print(f"\ntest {METRIC} across clients (each client's selected round):")
    print(
        "strategy  seed  mean    std     cv     gini   jain   | popularity: mean    std     cv"
        "     gini   jain   | client 95% CI width"
    )
    for (strategy, seed), results in grid.items():
        own, popularity = test_balance(results), test_balance(results["popularity"])
        print(
            f"{strategy:8}  {seed:4}  "
            + "  ".join(f"{own[k]:.4f}" for k in ("mean", "std", "cv", "gini", "jain"))
            + "  |             "
            + "  ".join(f"{popularity[k]:.4f}" for k in ("mean", "std", "cv", "gini", "jain"))
            + f"  | {client_interval_width(results):.4f}"
        )


if __name__ == "__main__":
    main()
