"""What leaves a silo and its defences on MovieLens-100K: attack success, epsilon, quality.

Runs ``fellrec fit`` of the recipe (``configs/ml100k-minilm-base.yaml`` with FELLRec, leave-one-out,
5 k-means clients, 3 rounds, validation every round, each client's best round selected on
validation and tested) once per option, each in its own process and run directory: the item
components' options (bias initialisation, share noise) and user-level DP-SGD (``model.dp_sgd``) at
three noise levels. Every run's ``results.json`` holds, under ``privacy.parameters``, the
honest-but-curious server's guess of each client's item set from what the client sent (ROC AUC per
client and round, in the signal's better direction; 0.5 is chance) and, under DP-SGD, each
client's (epsilon, delta) per round in its history. Writes ``<output>/item_defences.md`` (validation
and test NDCG@10, the worst client, the largest client epsilon over the run, the attack's AUC per
signal) and ``<output>/item_defences.png`` (test NDCG@10 against epsilon and against the attack).
Finished runs are skipped; ``--only`` runs a subset (directory names)::

    python benchmarks/bench_item_defences.py --output runs/item-defences     # ~60 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOISE = ["--model.items.bias_init", "dp_log_popularity", "--model.items.bias_init_seed", "0"]
OPTIONS: dict[str, list[str]] = {
    "recipe (log_popularity)": [],
    "bias_init zeros": ["--model.items.bias_init", "zeros"],
    "dp_log_popularity eps 1": NOISE,
    "dp eps 1 + share noise 0.03/0.3": [
        *NOISE,
        *("--model.items.share_noise_ids", "0.03", "--model.items.share_noise_bias", "0.3"),
    ],
    "dp eps 1 + share noise 0.1/1.0": [
        *NOISE,
        *("--model.items.share_noise_ids", "0.1", "--model.items.share_noise_bias", "1.0"),
    ],
}
DP_SIGMAS = (0.8, 1.0, 2.0)
for _sigma in DP_SIGMAS:
    OPTIONS[f"DP-SGD sigma {_sigma}"] = [
        *("--model.items.bias_init", "zeros", "--model.dp_sgd.noise_multiplier", str(_sigma)),
    ]
#: DP-SGD as selected on validation (README, "Differential privacy for what a client sends"):
#: text-only items, larger learning rates, the biases started from user-level DP popularity;
#: seeded, so the runs repeat (a deployment leaves model.dp_sgd.seed unset).
DP_RECIPE = [
    *("--model.items.bias_init", "zeros", "--model.items.ids", "false"),
    *("--model.items.lr", "0.1", "--model.lr", "0.005", "--model.dp_sgd.seed", "0"),
]
#: (training sigma, popularity sigma): epsilon about 8, 4 and 2.5 on ML-100K's 5 clients.
DP_LEVELS = ((1.0, 1.0), (1.5, 2.0), (2.0, 3.0))
for _sigma, _popularity in DP_LEVELS:
    OPTIONS[f"DP recipe sigma {_sigma} / {_popularity}"] = [
        *DP_RECIPE,
        *("--model.dp_sgd.noise_multiplier", str(_sigma)),
        *("--model.dp_sgd.popularity_noise", str(_popularity)),
    ]
DIRECTORIES = [
    "recipe",
    "zeros",
    "dp1",
    "dp1-noise-mid",
    "dp1-noise-high",
    *(f"dpsgd-{sigma}" for sigma in DP_SIGMAS),
    *(f"dp-recipe-{sigma}-{popularity}" for sigma, popularity in DP_LEVELS),
]


def fetch_movielens() -> str:
    """The RecBole-format ML-100K directory (``fellrec data fetch ml-100k``)."""
    done = subprocess.run(
        ["fellrec", "data", "fetch", "ml-100k"], check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


def run(directory: Path, data: str, options: list[str], rounds: int) -> None:
    """``fellrec fit`` of the recipe with ``options`` into ``directory`` (skipped when done)."""
    if (directory / "results.json").is_file():
        return
    command = [
        "fellrec",
        "fit",
        *("--config", str(REPO / "configs" / "ml100k-minilm-base.yaml")),
        *("--config", str(REPO / "configs" / "ml100k-minilm-fellrec.yaml")),
        *("--data.dataset.format", "recbole", "--data.dataset.path", data),
        *("--data.split", "leave_one_out", "--trainer.max_epochs", str(rounds)),
        *("--trainer.default_root_dir", str(directory)),
        *options,
    ]
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def auc_cell(rounds: list[dict[str, Any]], signal: str) -> str:
    """Mean over clients of the last round's AUC, and the highest over all rounds and clients.

    ``-`` when the run sends no such signal (e.g. no ID rows with ``model.items.ids: false``).
    """
    if any(signal not in c["signals"] for r in rounds for c in r["clients"]):
        return "-"
    last = [c["signals"][signal]["auc_either"] for c in rounds[-1]["clients"]]
    every = [c["signals"][signal]["auc_either"] for r in rounds for c in r["clients"]]
    return f"{statistics.mean(last):.3f} ({max(every):.3f})"


def largest_epsilon(results: dict[str, Any]) -> float | None:
    """The largest client epsilon after the run's last round (None without DP-SGD)."""
    spent = results["history"][-1].get("dp", {}).get("epsilon")
    return max(e for e in spent if e is not None) if spent else None


def row(name: str, results: dict[str, Any]) -> list[str]:
    """One table row: quality on validation and test, epsilon and the attack's success."""
    parameters = results["privacy"]["parameters"]
    epsilon = largest_epsilon(results)
    initial = [c["signals"]["bias"] for c in parameters["initial"]]
    best = results["best_round"]
    validation = results["history"][best]["val"]["overall"]["ndcg@10"]
    return [
        name,
        f"{validation:.4f}",
        f"{results['overall']['ndcg@10']:.4f}",
        f"{results['balance']['ndcg@10']['min']:.4f}",
        "-" if epsilon is None else f"{epsilon:.2f}",
        f"{statistics.mean(b['auc_either'] for b in initial):.3f}",
        f"{statistics.mean(b['counts_exact'] for b in initial):.2f}",
        *(auc_cell(parameters["rounds"], s) for s in ("bias", "bias_update", "id_update")),
    ]


def table(rows: list[list[str]]) -> str:
    """A Markdown table of the rows."""
    header = [
        "option",
        "val NDCG@10",
        "test NDCG@10",
        "worst client",
        "epsilon (largest client)",
        "start: bias AUC",
        "counts exact",
        "bias AUC",
        "bias update AUC",
        "ID-row move AUC",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(points: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Test NDCG@10 (overall and worst client) against epsilon and against the bias-update AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epsilon, by_attack) = plt.subplots(1, 2, figsize=(11, 4.2))
    no_dp = max([e for _, r in points if (e := largest_epsilon(r)) is not None] + [1.0]) * 1.6
    for name, results in points:
        epsilon = largest_epsilon(results)
        x = no_dp if epsilon is None else epsilon
        last = results["privacy"]["parameters"]["rounds"][-1]["clients"]
        auc = statistics.mean(c["signals"]["bias_update"]["auc_either"] for c in last)
        for axis, position in ((by_epsilon, x), (by_attack, auc)):
            axis.scatter(position, results["overall"]["ndcg@10"], marker="o", color="C0")
            axis.scatter(position, results["balance"]["ndcg@10"]["min"], marker="v", color="C1")
            axis.annotate(name, (position, results["overall"]["ndcg@10"]), fontsize=7)
    by_epsilon.set_xscale("log")
    by_epsilon.set_xlabel("largest client epsilon over the run (no DP-SGD: right edge)")
    by_attack.set_xlabel("item-set attack AUC from the bias update, last round (0.5 = chance)")
    for axis in (by_epsilon, by_attack):
        axis.set_ylabel("test NDCG@10 (o overall, v worst client)")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    """Run the options, then write the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "item-defences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="comma-separated run directories to run (default: all)"
    )
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    unknown = only - set(DIRECTORIES)
    if unknown:
        parser.error(f"--only: unknown runs {sorted(unknown)}; choose from {DIRECTORIES}")
    data = fetch_movielens()
    rows, points = [], []
    for (name, options), directory in zip(OPTIONS.items(), DIRECTORIES, strict=True):
        if only and directory not in only:
            continue
        run(args.output / directory, data, options, args.rounds)
        results = json.loads((args.output / directory / "results.json").read_text())
        rows.append(row(name, results))
        points.append((name, results))
    text = table(rows)
    (args.output / "item_defences.md").write_text(text + "\n")
    plot(points, args.output / "item_defences.png")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
