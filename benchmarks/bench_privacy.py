"""The privacy/quality trade-off of every defence on MovieLens-100K, in one command.

Runs the two sweeps, each in its own processes and directories (finished runs are skipped, so an
interrupted sweep goes on), then draws them together:

- ``bench_item_defences.py`` into ``<output>/item-defences``: the item components' options and
  user-level DP-SGD (``model.dp_sgd``) at three noise levels, against the parameter attack;
- ``bench_hidden_defence.py`` into ``<output>/hidden-defence``: ``model.hidden_defence`` at six
  noise levels, against the linear map and the server's front copy.

Writes ``<output>/privacy_tradeoff.md`` (both tables) and ``<output>/privacy_tradeoff.png``: test
NDCG@10 (overall and worst client) against epsilon, against the parameter attack's AUC and against
the hidden-state attack's recovery, with popularity's level::

    python benchmarks/bench_privacy.py --output runs/privacy     # ~2 h on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_item_defences import DIRECTORIES, OPTIONS, largest_epsilon

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def sweep(script: str, output: Path) -> None:
    """Run one sweep script into ``output`` (it skips what it finished before)."""
    command = [sys.executable, str(HERE / script), "--output", str(output)]
    subprocess.run(command, check=True)


def item_points(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each finished item-defence run's name and results."""
    points = []
    for name, run in zip(OPTIONS, DIRECTORIES, strict=True):
        path = directory / run / "results.json"
        if path.is_file():
            points.append((name, json.loads(path.read_text())))
    return points


def hidden_rows(directory: Path) -> list[dict[str, str]]:
    """The hidden-defence sweep's rows (its CSV)."""
    with open(directory / "hidden_defence.csv", newline="") as table:
        return list(csv.DictReader(table))


def plot(items: list[tuple[str, dict[str, Any]]], hidden: list[dict[str, str]], path: Path) -> None:
    """Test NDCG@10 against epsilon, the parameter attack and the hidden-state attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
    by_epsilon, by_auc, by_recovery = axes
    for name, results in items:
        overall, worst = results["overall"]["ndcg@10"], results["balance"]["ndcg@10"]["min"]
        epsilon = largest_epsilon(results)
        if epsilon is not None:
            by_epsilon.scatter([epsilon, epsilon], [overall, worst], c=["C0", "C1"], marker="o")
            by_epsilon.annotate(name, (epsilon, overall), fontsize=7)
        last = results["privacy"]["parameters"]["rounds"][-1]["clients"]
        auc = statistics.mean(c["signals"]["bias_update"]["auc_either"] for c in last)
        by_auc.scatter([auc, auc], [overall, worst], c=["C0", "C1"], marker="o")
        by_auc.annotate(name, (auc, overall), fontsize=7)
    for row in hidden:
        recovery = float(row["front_copy_recovery"])
        overall, worst = float(row["test_ndcg10"]), float(row["worst_client_ndcg10"])
        by_recovery.scatter([recovery, recovery], [overall, worst], c=["C0", "C1"], marker="o")
        by_recovery.annotate(f"noise {row['noise'] or 'none'}", (recovery, overall), fontsize=7)
    popularity = items[0][1]["popularity"]["overall"]["ndcg@10"] if items else None
    labels = (
        "largest client epsilon (DP-SGD runs)",
        "parameter attack: bias-update AUC, last round (0.5 = chance)",
        "hidden-state attack: front-copy recovery (chance 0.0006)",
    )
    for axis, label in zip(axes, labels, strict=True):
        axis.set_xlabel(label, fontsize=8)
        axis.grid(alpha=0.3)
        if popularity is not None:
            axis.axhline(popularity, color="grey", linestyle="--", linewidth=0.8)
    by_epsilon.set_xscale("log")
    by_epsilon.set_ylabel("test NDCG@10")
    figure.suptitle("blue: overall, orange: worst client; dashed: popularity", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    """Run both sweeps, then write the combined table and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "privacy")
    parser.add_argument(
        "--draw-only", action="store_true", help="only combine what the sweeps have written"
    )
    args = parser.parse_args()
    items_dir, hidden_dir = args.output / "item-defences", args.output / "hidden-defence"
    if not args.draw_only:
        sweep("bench_item_defences.py", items_dir)
        sweep("bench_hidden_defence.py", hidden_dir)
    text = "\n\n".join(
        [
            "## Item components and DP-SGD\n\n" + (items_dir / "item_defences.md").read_text(),
            "## Hidden states\n\n" + (hidden_dir / "hidden_defence.md").read_text(),
        ]
    )
    (args.output / "privacy_tradeoff.md").write_text(text)
    plot(item_points(items_dir), hidden_rows(hidden_dir), args.output / "privacy_tradeoff.png")
    print(text)


if __name__ == "__main__":
    main()
