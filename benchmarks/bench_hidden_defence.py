"""The hidden-state defence on MovieLens-100K: attack recovery against NDCG@10, per noise level.

For each level of ``model.hidden_defence`` (none, then ``--clip`` with each ``--noise``
multiplier, noise seed 0) this runs, each in its own process and directory under ``--output``,
with ``model.k_front`` ``--k-front``:

- ``fellrec attack`` of the recipe (``configs/ml100k-minilm-base.yaml``, leave-one-out) at that
  split point: the server's linear map and its copy of the client's front against the defended
  hidden states of 50 real training windows (the parameters the clients start from);
- ``fellrec fit`` of the same recipe (FELLRec, 5 k-means clients) for ``--rounds`` rounds, each
  client's best round selected on validation and tested (the run's own privacy probe is off: the
  attack above measures the leak).

Writes ``<output>/hidden_defence.md`` and ``.csv`` (recovery, validation and test NDCG@10, the
worst client, wall times) and ``hidden_defence.png`` (recovery against test NDCG@10, with the
popularity baseline and 1.5x it). Finished steps are skipped, so an interrupted sweep goes on::

    python benchmarks/bench_hidden_defence.py --output runs/hidden-defence   # ~45 min, 2 cores
    python benchmarks/bench_hidden_defence.py --attack-only                  # ~15 s per level
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_item_defences import fetch_movielens

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [
    str(REPO / "configs" / "ml100k-minilm-base.yaml"),
    str(REPO / "configs" / "ml100k-minilm-fellrec.yaml"),
]
COLUMNS = [
    "level",
    "clip",
    "noise",
    "noise_std",
    "linear_recovery",
    "front_copy_recovery",
    "val_ndcg10",
    "test_ndcg10",
    "worst_client_ndcg10",
    "attack_s",
    "fit_s",
]


def defence_flags(clip: float | None, noise: float) -> list[str]:
    """The ``model.hidden_defence`` flags of one level (none: the defence off).

    The noise seed is fixed so the sweep reruns bit for bit (a deployment leaves it unset).
    """
    if clip is None:
        return []
    return [
        *("--model.hidden_defence.clip", str(clip), "--model.hidden_defence.noise", str(noise)),
        *("--model.hidden_defence.seed", "0"),
    ]


def recipe_flags(data: str) -> list[str]:
    """The recipe's configs and data (leave-one-out) as ``fellrec`` flags."""
    configs = [flag for path in CONFIGS for flag in ("--config", path)]
    return [
        *configs,
        *("--data.dataset.format", "recbole", "--data.dataset.path", data),
        *("--data.split", "leave_one_out"),
    ]


def timed(command: list[str], log: Path, marker: Path) -> float | None:
    """Run ``command`` (output to ``log``) unless ``marker`` exists; its wall time in seconds."""
    if marker.is_file():
        return None
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def attack(directory: Path, data: str, flags: list[str], k_front: int) -> None:
    """``fellrec attack`` at ``k_front`` into ``directory/privacy.json`` (skipped when done)."""
    command = [
        "fellrec",
        "attack",
        *recipe_flags(data),
        *flags,
        *("--model.k_front", str(k_front), "--k-fronts", str(k_front)),
        *("--output", str(directory)),
    ]
    seconds = timed(command, directory / "attack.log", directory / "privacy.json")
    if seconds is not None:
        (directory / "attack_seconds.txt").write_text(f"{seconds:.1f}\n")


def fit(directory: Path, data: str, flags: list[str], rounds: int, k_front: int) -> None:
    """``fellrec fit`` of the recipe, ``rounds`` rounds, into ``directory`` (skipped when done)."""
    command = [
        "fellrec",
        "fit",
        *recipe_flags(data),
        *flags,
        *("--trainer.max_epochs", str(rounds), "--model.privacy_probe", "false"),
        *("--model.k_front", str(k_front)),
        *("--trainer.default_root_dir", str(directory)),
    ]
    seconds = timed(command, directory / "fit.log", directory / "results.json")
    if seconds is not None:
        (directory / "fit_seconds.txt").write_text(f"{seconds:.1f}\n")


def _seconds(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def measure(directory: Path, clip: float | None, noise: float, k_front: int) -> dict[str, Any]:
    """One level's row from its attack's ``privacy.json`` and its fit's ``results.json``."""
    privacy = json.loads((directory / "attack" / "privacy.json").read_text())["privacy"]
    linear = next(p for p in privacy["curve"] if p["k_front"] == k_front)
    front_copy = next(p for p in privacy["front_copy"]["curve"] if p["k_front"] == k_front)
    row: dict[str, Any] = {
        "level": directory.name,
        "clip": "" if clip is None else clip,
        "noise": "" if clip is None else noise,
        "noise_std": "" if clip is None else clip * noise,
        "linear_recovery": linear["token_recovery"],
        "front_copy_recovery": front_copy["token_recovery"],
        "attack_s": _seconds(directory / "attack" / "attack_seconds.txt"),
        "val_ndcg10": "",
        "test_ndcg10": "",
        "worst_client_ndcg10": "",
        "fit_s": _seconds(directory / "fit" / "fit_seconds.txt"),
    }
    results_file = directory / "fit" / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        best = results["best_round"]
        row["val_ndcg10"] = results["history"][best]["val"]["overall"]["ndcg@10"]
        row["test_ndcg10"] = results["overall"]["ndcg@10"]
        row["worst_client_ndcg10"] = results["balance"]["ndcg@10"]["min"]
        row["popularity"] = results["popularity"]["overall"]["ndcg@10"]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (recoveries in percent, NDCG to four places)."""

    def cell(key: str, value: Any) -> str:
        if value == "" or value is None:
            return "" if key not in ("val_ndcg10", "test_ndcg10") else "not run"
        if key.endswith("recovery"):
            return f"{100 * value:.1f}%"
        if key.endswith("ndcg10"):
            return f"{value:.4f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r.get(k, "")) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, k_front: int) -> None:
    """Recovery (both attacks) against test NDCG@10, one point per level, popularity marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["test_ndcg10"] != ""]
    if not done:
        return
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for key, label, marker in (
        ("front_copy_recovery", "front copy", "o"),
        ("linear_recovery", "linear map", "s"),
    ):
        xs = [r["test_ndcg10"] for r in done]
        ys = [100 * r[key] for r in done]
        axes.plot(xs, ys, marker=marker, linestyle="-", label=label)
        if key == "front_copy_recovery":  # one label per level
            for r, x, y in zip(done, xs, ys, strict=True):
                axes.annotate(
                    r["level"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
    popularity = done[0].get("popularity")
    if popularity is not None:
        axes.axvline(popularity, color="grey", linestyle=":", label="popularity")
        axes.axvline(1.5 * popularity, color="grey", linestyle="--", label="1.5 x popularity")
    axes.axhline(10, color="red", linestyle="--", linewidth=0.8, label="10% recovery")
    axes.set_xlabel("test NDCG@10 (FELLRec, leave-one-out)")
    axes.set_ylabel("items recovered from h_front (%)")
    axes.set_title(f"model.hidden_defence on MovieLens-100K (MiniLM, k_front {k_front})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    """Run every level's attack, then every level's fit, then write the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "hidden-defence")
    parser.add_argument("--clip", type=float, default=12.0, help="model.hidden_defence.clip")
    parser.add_argument(
        "--noise",
        type=str,
        default="0.05,0.1,0.15,0.2,0.25,0.5",
        help="noise multipliers, comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds of each fit")
    parser.add_argument(
        "--k-front", type=int, default=1, help="model.k_front of the fits and the attacks"
    )
    parser.add_argument("--attack-only", action="store_true", help="skip the fits")
    args = parser.parse_args()
    data = fetch_movielens()
    levels: list[tuple[str, float | None, float]] = [("none", None, 0.0)]
    levels += [(f"noise-{n}", args.clip, float(n)) for n in args.noise.split(",") if n.strip()]
    for name, clip, noise in levels:  # the attacks first: a minute each
        attack(args.output / name / "attack", data, defence_flags(clip, noise), args.k_front)
    if not args.attack_only:
        for name, clip, noise in levels:
            fit(
                args.output / name / "fit",
                data,
                defence_flags(clip, noise),
                args.rounds,
                args.k_front,
            )
    rows = [measure(args.output / name, clip, noise, args.k_front) for name, clip, noise in levels]
    with open(args.output / "hidden_defence.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows)
    (args.output / "hidden_defence.md").write_text(text + "\n")
    plot(rows, args.output / "hidden_defence.png", args.k_front)
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
