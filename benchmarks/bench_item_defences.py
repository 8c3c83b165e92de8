"""The item-component leak and its defences on MovieLens-100K: attack success against quality.

Runs ``fellrec fit`` of the recipe (``configs/ml100k-minilm-base.yaml`` with FELLRec, leave-one-out,
5 k-means clients, 3 rounds, validation every round, each client's best round selected on
validation and tested) once per option of the item components, each in its own process and run
directory. Every run's ``results.json`` holds, under ``privacy.parameters``, the honest-but-curious
server's guess of each client's item set from what the client sent (ROC AUC per client and
round, in the signal's better direction; 0.5 is chance). Writes ``<output>/item_defences.md``:
validation and test NDCG@10 against the attack's AUC per signal. Finished runs are skipped::

    python benchmarks/bench_item_defences.py --output runs/item-defences     # ~30 min, 2 cores
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
NOISE = ["--model.items.bias_init", "dp_log_popularity"]
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
DIRECTORIES = ["recipe", "zeros", "dp1", "dp1-noise-mid", "dp1-noise-high"]


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
    with open(directory.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def auc_cell(rounds: list[dict[str, Any]], signal: str) -> str:
    """Mean over clients of the last round's AUC, and the highest over all rounds and clients."""
    last = [c["signals"][signal]["auc_either"] for c in rounds[-1]["clients"]]
    every = [c["signals"][signal]["auc_either"] for r in rounds for c in r["clients"]]
    return f"{statistics.mean(last):.3f} ({max(every):.3f})"


def row(name: str, results: dict[str, Any]) -> list[str]:
    """One table row: quality on validation and test, and the attack's success."""
    parameters = results["privacy"]["parameters"]
    initial = [c["signals"]["bias"] for c in parameters["initial"]]
    best = results["best_round"]
    validation = results["history"][best]["val"]["overall"]["ndcg@10"]
    return [
        name,
        f"{validation:.4f}",
        f"{results['overall']['ndcg@10']:.4f}",
        f"{results['balance']['ndcg@10']['min']:.4f}",
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
        "start: bias AUC",
        "counts exact",
        "bias AUC",
        "bias update AUC",
        "ID-row move AUC",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    """Run the options, then write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "item-defences")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = fetch_movielens()
    rows = []
    for (name, options), directory in zip(OPTIONS.items(), DIRECTORIES, strict=True):
        run(args.output / directory, data, options, args.rounds)
        results = json.loads((args.output / directory / "results.json").read_text())
        rows.append(row(name, results))
    text = table(rows)
    (args.output / "item_defences.md").write_text(text + "\n")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
