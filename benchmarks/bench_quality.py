"""Recommendation quality on real data: every strategy and baseline on MovieLens-100K, one table.

Fetches MovieLens-100K from the recbole wheel on PyPI (``fellrec data fetch ml-100k``), then, for
each split (``leave_one_out``, ``temporal``), on the same data, 5 k-means clients, seed and budget:

- baselines through fellrec's own evaluation: popularity (in every run), BPR-MF and SASRec
  (``fellrec baselines``, trained centrally on all training interactions);
- ``fellrec fit`` of the recipe in ``configs/ml100k-minilm-base.yaml`` (the sequential
  recommender) with centralized, local, FedAvg, FedProx, FELLRec, FELLRec with the paper's
  unweighted mix (``size_weighted: false``) and FELLRec's two ablations (``attention: false``,
  ``heating: false``), each a separate process, run directory and log.

Every model is selected on validation (per-client selection, best round) and reported on test.
With ``--seeds 0,1,2`` the strategies named by ``--seed-strategies`` (and the baselines of
``--seed-baselines``, with their own seeds) are run again for each further seed (``data.seed``:
the k-means partition, subsample, initial draws and batch order, and ``seed_everything``) into
``<output>/<split>/seed-<s>/``, and the document gains a table of the mean and spread over seeds
and the paired FELLRec - FedAvg differences: the comparison a single seed cannot settle
(benchmarks/README.md, "Run-to-run noise").
Writes ``<output>/quality.md`` (overall and worst-client NDCG@10 / Recall@10 with 95% bootstrap
intervals, std and Jain's index across clients, best round, minutes; the issue's targets checked)
and, per split, ``fellrec report`` into ``<output>/<split>/``. Finished runs are skipped, so an
interrupted benchmark resumes where it stopped::

    python benchmarks/bench_quality.py --budget cpu-bf16     # 3 rounds in bf16: 25 min on 2 cores
    python benchmarks/bench_quality.py                       # fp32: a round ~1.35x longer
    python benchmarks/bench_quality.py --budget full         # 20 rounds, early stopping, any device
    python benchmarks/bench_quality.py --budget gpu --jobs 4 # the same on a GPU in bf16, 4 at once
    python benchmarks/bench_quality.py --splits leave_one_out --strategies fellrec,fedavg
    python benchmarks/bench_quality.py --splits leave_one_out --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "configs" / "ml100k-minilm-base.yaml"
STRATEGY_SPECS: dict[str, list[str]] = {
    "centralized": ["--loop.strategy", "fellrec.federation.strategies.Centralized"],
    "local": ["--loop.strategy", "fellrec.federation.strategies.Local"],
    "fedavg": ["--loop.strategy", "fellrec.federation.strategies.FedAvg"],
    "fedprox": ["--loop.strategy", "fellrec.federation.strategies.FedProx"],
    # FedProx's mu is normally swept (0.001-1); the class default 0.001 was selected on
    # validation against 0.01, which restrains the sparse per-item rows strongly. 0.01 is run
    # too, and the checks take the one with the better validation (see the table).
    "fedprox-mu0.01": [
        "--loop.strategy",
        "fellrec.federation.strategies.FedProx",
        "--loop.strategy.init_args.mu",
        "0.01",
    ],
    "fellrec": ["--loop.strategy", "fellrec.federation.strategies.FELLRec"],
    # The paper's mix, without weighting the other clients by their data (size_weighted: false).
    "fellrec-unweighted": [
        "--loop.strategy",
        "fellrec.federation.strategies.FELLRec",
        "--loop.strategy.init_args.size_weighted",
        "false",
    ],
    "fellrec-no-attention": [
        "--loop.strategy",
        "fellrec.federation.strategies.FELLRec",
        "--loop.strategy.init_args.attention",
        "false",
    ],
    "fellrec-no-heating": [
        "--loop.strategy",
        "fellrec.federation.strategies.FELLRec",
        "--loop.strategy.init_args.heating",
        "false",
    ],
}
FEDERATED = [name for name in STRATEGY_SPECS if name != "centralized"]
BASELINE_NAMES = ("bpr", "sasrec")
#: The strategies run again for every further seed (``--seed-strategies``).
SEED_STRATEGIES = ("centralized", "local", "fedavg", "fellrec")
#: The config's own round budget (its early stopping ends runs sooner).
FULL_BUDGET = ["--trainer.max_epochs", "20"]
#: Per budget: the settings every strategy gets (the same for all of them).
BUDGETS: dict[str, list[str]] = {
    # 3 rounds of one local epoch over every training interaction: validation peaks within
    # rounds 1-3 on ML-100K. 9 strategies x 2 splits: 25 min on 2 cores in cpu-bf16 with the
    # default --jobs 2; fp32 takes ~1.35x as long a round (not timed whole).
    "cpu": ["--trainer.max_epochs", "3"],
    # The same in bf16-mixed, for CPUs with bf16 matrix units (AVX-512 BF16, AMX): 1.3-1.7x faster
    # steps, quality within seed noise (benchmarks/README.md, "bench_train_step.py").
    "cpu-bf16": ["--trainer.max_epochs", "3", "--trainer.precision", "bf16-mixed"],
    # The config's own budget on any machine: 20 rounds at most, early stopping (patience 5) on
    # validation NDCG@10, as the baselines train; ~7-11 rounds of ~1 min per strategy on 2 cores.
    "full": FULL_BUDGET,
    # The same on a GPU in bf16.
    "gpu": ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed", *FULL_BUDGET],
}
SPLITS = ("leave_one_out", "temporal")
#: The job name of a split's baselines (one ``fellrec baselines`` process for all of them).
BASELINES_JOB = "baselines"


#: Peak resident memory (MiB) of each finished ``fellrec`` process, by its log path.
PEAK_RSS_MIB: dict[str, float] = {}


def fellrec(args: list[str], log: Path) -> float:
    """Run ``fellrec <args>`` in a fresh process, output into ``log``; return its seconds.

    The process's peak resident memory goes into :data:`PEAK_RSS_MIB` (from ``wait4``: that
    process's own, not its siblings').
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "fellrec", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    PEAK_RSS_MIB[str(log)] = usage.ru_maxrss / 1024  # KiB on Linux
    if process.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"fellrec {' '.join(args[:3])} failed (see {log}):\n{tail}")
    return time.perf_counter() - started


def data_arguments(data_dir: Path, split: str, cache: Path) -> list[str]:
    """The data settings every run of a split shares."""
    return [
        "--data.dataset.format",
        "recbole",
        "--data.dataset.path",
        str(data_dir),
        "--data.split",
        split,
        "--data.cache_dir",
        str(cache),
    ]


def split_root(output: Path, split: str, seed: int | None) -> Path:
    """Where the runs of one split (and one further seed) go."""
    return output / split if seed is None else output / split / f"seed-{seed}"


def load_results(runs: dict[str, Path]) -> dict[str, Any]:
    """The results.json of each run by name."""
    return {name: json.loads((d / "results.json").read_text()) for name, d in runs.items()}


def run_split(
    split: str,
    data_dir: Path,
    output: Path,
    budget: str,
    strategies: list[str],
    baselines: list[str],
    seed: int | None = None,
    jobs: int = 1,
    specs: dict[str, list[str]] | None = None,
    extra: list[str] | None = None,
) -> dict[str, Path]:
    """Every baseline and strategy of one split; their run directories by name.

    Args:
        seed: ``None`` runs the config's seed into ``<output>/<split>/``; a number runs that
            seed (``data.seed`` and ``seed_everything``) into ``<output>/<split>/seed-<n>/``.
        jobs: How many runs go at once (the baselines' process and each strategy's).
        specs: The flags of each name in ``strategies`` (default :data:`STRATEGY_SPECS`).
        extra: Flags every run of the split gets, baselines included (e.g. a data protocol).
    """
    specs = STRATEGY_SPECS if specs is None else specs
    root = split_root(output, split, seed)
    shared = data_arguments(data_dir, split, output / "cache") + list(extra or [])
    if seed is not None:
        shared += ["--data.seed", str(seed), "--seed_everything", str(seed)]
    runs: dict[str, Path] = {}
    # Every process still to run, by name; the baselines are one process of their own
    # ("baselines"), first: alone, or as one of the concurrent jobs.
    pending: dict[str, list[str]] = {}
    timing_path = root / "seconds.json"
    seconds: dict[str, float] = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    if baselines:
        directories = [root / name for name in baselines]
        if not all((d / "results.json").is_file() for d in directories):
            args = ["baselines", "--config", str(BASE_CONFIG), *shared]
            args += ["--baselines", ",".join(baselines), "--output", str(root)]
            if seed is not None:  # the baselines have their own seeds (sasrec.seed, bpr.seed)
                for name in baselines:
                    args += [f"--{name}.seed", str(seed)]
            pending[BASELINES_JOB] = args
        runs.update(zip(baselines, directories, strict=True))
    for name in strategies:
        directory = root / name
        runs[name] = directory
        if (directory / "results.json").is_file():
            print(f"[{root.relative_to(output)}] {name}: finished before, skipped", flush=True)
            continue
        args = ["fit", "--config", str(BASE_CONFIG), *shared, *BUDGETS[budget]]
        args += [*specs[name], "--trainer.default_root_dir", str(directory)]
        args += ["--checkpoint.dirpath", str(directory / "checkpoints")]
        args += ["--trainer.enable_progress_bar", "false"]
        if (directory / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", str(directory / "checkpoints" / "last.ckpt")]
        pending[name] = args
    # Each run is its own process; with jobs > 1 several share the machine (a GPU is far from
    # busy with one MiniLM run). The split is prepared into the data cache first, so the
    # concurrent runs load it instead of each computing the same partition.
    if jobs > 1 and len(pending) > 1:
        fellrec(
            ["data", "stats", "--config", str(BASE_CONFIG), *shared], root / "logs" / "data.log"
        )

    memory_path = root / "peak_rss_mib.json"
    memory: dict[str, float] = json.loads(memory_path.read_text()) if memory_path.exists() else {}

    def log_of(name: str) -> Path:
        return root / "logs" / f"{name}.log"

    def fit(name: str, args: list[str]) -> float:
        what = f"baselines {', '.join(baselines)}" if name == BASELINES_JOB else f"{name}: fitting"
        print(f"[{root.relative_to(output)}] {what}", flush=True)
        return fellrec(args, log_of(name))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fit, name, args): name for name, args in pending.items()}
        try:
            for future in as_completed(futures):
                name = futures[future]
                seconds[name] = future.result()
                # Recorded here, in the main thread: the dict never changes while it is dumped.
                memory[name] = PEAK_RSS_MIB[str(log_of(name))]
                print(
                    f"[{root.relative_to(output)}] {name}: {seconds[name] / 60:.1f} min", flush=True
                )
                timing_path.parent.mkdir(parents=True, exist_ok=True)
                timing_path.write_text(json.dumps(seconds, indent=2))
                memory_path.write_text(json.dumps(memory, indent=2))
        except BaseException:
            # A failed run (baselines included) stops the benchmark: the runs not yet started
            # are dropped (leaving the pool would otherwise start every one of them first); one
            # already running beside it finishes first, and its results.json is kept for a resume.
            for future in futures:
                future.cancel()
            raise
    timing_path.write_text(json.dumps(seconds, indent=2))
    report = ["report", *(str(d) for d in runs.values()), "--output", str(root)]
    fellrec(report, root / "logs" / "report.log")
    return runs


def _interval(results: dict[str, Any], metric: str) -> str:
    bounds = ((results.get("ci") or {}).get("overall") or {}).get(metric)
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "-"


def best_validation(results: dict[str, Any]) -> float | None:
    """The best overall validation NDCG@10 of a run (federated history or baseline training)."""
    values = [h["val"]["overall"]["ndcg@10"] for h in results.get("history", []) if "val" in h]
    if values:
        return float(max(values))
    training = results.get("training") or {}
    return training.get("best_validation")


def _row(name: str, results: dict[str, Any], minutes: float | None) -> list[str]:
    overall, balance = results["overall"], results["balance"]
    best = results.get("best_round")
    validation = best_validation(results)
    cells = [
        name,
        "-" if validation is None else f"{validation:.4f}",
        f"{overall['ndcg@10']:.4f}",
        _interval(results, "ndcg@10"),
        f"{overall['recall@10']:.4f}",
        f"{balance['ndcg@10']['min']:.4f}",
        f"{balance['recall@10']['min']:.4f}",
        f"{balance['ndcg@10']['std']:.4f}",
        f"{balance['ndcg@10']['jain']:.3f}",
        "-" if best is None else str(best),
        "-" if minutes is None else f"{minutes:.1f}",
    ]
    return cells


HEADER = [
    "model",
    "best val NDCG@10",
    "NDCG@10",
    "95% CI",
    "Recall@10",
    "worst NDCG@10",
    "worst Recall@10",
    "std NDCG@10",
    "Jain NDCG@10",
    "best round",
    "minutes",
]


def table(runs: dict[str, Path], seconds: dict[str, float]) -> tuple[list[str], dict[str, Any]]:
    """The Markdown table of one split and the loaded results by name."""
    loaded = load_results(runs)
    first = next(iter(loaded.values()))
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    popularity = dict(first["popularity"])
    popularity.setdefault("ci", popularity.get("ci"))
    lines.append("| " + " | ".join(_row("popularity", popularity, None)) + " |")
    for name, results in loaded.items():
        minutes = seconds.get(name)
        lines.append("| " + " | ".join(_row(name, results, minutes and minutes / 60)) + " |")
    return lines, loaded


def targets(loaded: dict[str, Any]) -> list[str]:
    """The issue's targets, measured on the leave_one_out split."""
    lines = []
    popularity = loaded[next(iter(loaded))]["popularity"]["overall"]["ndcg@10"]

    def ndcg(name: str, stat: str | None = None) -> float | None:
        if name not in loaded:
            return None
        if stat is None:
            return float(loaded[name]["overall"]["ndcg@10"])
        return float(loaded[name]["balance"]["ndcg@10"][stat])

    def check(claim: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"- {claim}: **{mark}** ({detail})")

    # FedProx's mu is a tuned hyper-parameter: the run with the better validation stands for it.
    proximal = [n for n in ("fedprox", "fedprox-mu0.01") if n in loaded]
    if len(proximal) == 2:
        worse = min(proximal, key=lambda n: best_validation(loaded[n]) or 0.0)
        lines.append(f"- FedProx: mu selected on validation; {worse} is left out of the checks")
        loaded = {k: v for k, v in loaded.items() if k != worse}
    for name in ("centralized", *FEDERATED):
        value = ndcg(name)
        if value is not None:
            check(
                f"{name} >= 1.5 x popularity",
                value >= 1.5 * popularity,
                f"{value:.4f} vs {1.5 * popularity:.4f}",
            )
    central, sasrec = ndcg("centralized"), ndcg("sasrec")
    if central is not None and sasrec is not None:
        check("centralized >= SASRec", central >= sasrec, f"{central:.4f} vs {sasrec:.4f}")
    fell, avg = ndcg("fellrec"), ndcg("fedavg")
    if fell is not None and avg is not None:
        check("FELLRec >= FedAvg overall", fell >= avg, f"{fell:.4f} vs {avg:.4f}")
        worst_fell, worst_avg = ndcg("fellrec", "min"), ndcg("fedavg", "min")
        assert worst_fell is not None and worst_avg is not None
        check(
            "FELLRec >= FedAvg, worst client",
            worst_fell >= worst_avg,
            f"{worst_fell:.4f} vs {worst_avg:.4f}",
        )
    if fell is not None and central is not None:
        check("FELLRec >= 90% of centralized", fell >= 0.9 * central, f"{fell / central:.1%}")
    for name in FEDERATED:
        if name in loaded:
            best = loaded[name]["best_round"]
            check(f"{name}: best validation round > 0", best > 0, f"round {best}")
    return lines


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def seed_summary(per_seed: dict[int, dict[str, Any]], popularity: float) -> list[str]:
    """Mean and spread over seeds per strategy, and the paired FELLRec - FedAvg differences.

    Args:
        per_seed: Per seed, the loaded results by strategy name.
        popularity: Popularity's overall test NDCG@10 (the same for every seed: the split does
            not depend on it).
    """
    seeds = sorted(per_seed)
    names = [n for n in (*BASELINE_NAMES, *STRATEGY_SPECS) if all(n in per_seed[s] for s in seeds)]

    def values(name: str, stat: str | None = None) -> list[float]:
        picked = []
        for seed in seeds:
            results = per_seed[seed][name]
            if stat is None:
                picked.append(float(results["overall"]["ndcg@10"]))
            else:
                picked.append(float(results["balance"]["ndcg@10"][stat]))
        return picked

    header = ["model", "seeds", "NDCG@10 mean ± std", "worst NDCG@10 mean ± std"]
    header += [f"seed {s}" for s in seeds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        overall = values(name)
        cells = [name, str(len(seeds)), _spread(overall), _spread(values(name, "min"))]
        lines.append("| " + " | ".join(cells + [f"{v:.4f}" for v in overall]) + " |")
    lines += ["", f"Popularity: {popularity:.4f} (1.5 x = {1.5 * popularity:.4f})."]
    if "fellrec" in names and "fedavg" in names:
        for label, stat in (("overall", None), ("worst client", "min")):
            pairs = zip(values("fellrec", stat), values("fedavg", stat), strict=True)
            gaps = [a - b for a, b in pairs]
            ahead = sum(gap >= 0 for gap in gaps)
            listed = ", ".join(f"{gap:+.4f}" for gap in gaps)
            mean = statistics.mean(gaps)
            lines.append(
                f"- FELLRec - FedAvg, {label}, per seed: {listed}; mean {mean:+.4f}; "
                f"FELLRec >= FedAvg in {ahead} of {len(gaps)} seeds"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--strategies", default=",".join(STRATEGY_SPECS))
    parser.add_argument("--baselines", default=",".join(BASELINE_NAMES))
    parser.add_argument("--output", type=Path, default=Path("runs/quality"))
    parser.add_argument("--data", type=Path, default=None, help="ml-100k RecBole directory")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds; the first runs everything, the others --seed-strategies",
    )
    parser.add_argument("--seed-strategies", default=",".join(SEED_STRATEGIES))
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at once (the baselines and each strategy its own process; 'minutes' are "
        "then wall times of runs sharing the machine); 2 does 1.7x the work of 1 on 2 CPU "
        "cores with the same results; more on a GPU",
    )
    parser.add_argument(
        "--seed-baselines", default="sasrec", help="baselines run again per further seed"
    )
    options = parser.parse_args()
    try:
        seeds = [int(s) for s in options.seeds.split(",") if s]
    except ValueError as error:
        message = f"--seeds must be comma-separated integers, got {options.seeds!r}"
        raise SystemExit(message) from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds must name distinct seeds, got {options.seeds!r}")
    if options.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {options.jobs}")
    strategies = [s for s in options.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGY_SPECS]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {list(STRATEGY_SPECS)}")
    baselines = [b for b in options.baselines.split(",") if b]
    seed_strategies = [s for s in options.seed_strategies.split(",") if s]
    unknown = [s for s in seed_strategies if s not in STRATEGY_SPECS]
    if unknown:
        raise SystemExit(f"unknown --seed-strategies {unknown}; choose from {list(STRATEGY_SPECS)}")
    seed_baselines = [b for b in options.seed_baselines.split(",") if b]
    output = options.output
    if options.data is None:
        from fellrec.data.fetch import fetch_ml100k

        data_dir = fetch_ml100k(output / "data")
    else:
        data_dir = options.data
    started = time.perf_counter()
    document = [
        "# Recommendation quality on MovieLens-100K",
        "",
        f"`python benchmarks/bench_quality.py --budget {options.budget} --seeds {options.seeds} "
        f"--jobs {options.jobs}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); the recipe of "
        "`configs/ml100k-minilm-base.yaml` (sequential recommender, MiniLM + LoRA, per-item "
        "components); 5 k-means clients; budget "
        f"`{' '.join(BUDGETS[options.budget])}`. Selected on validation, reported on test; "
        "worst = the lowest client; std and Jain's index across the 5 clients; 95% bootstrap "
        "interval over test users.",
    ]
    for split in [s for s in options.splits.split(",") if s]:
        first = None if seeds[0] == 0 else seeds[0]  # seed 0 is the config's own
        runs = run_split(
            split, data_dir, output, options.budget, strategies, baselines, first, options.jobs
        )
        root = split_root(output, split, first)
        seconds = json.loads((root / "seconds.json").read_text())
        lines, loaded = table(runs, seconds)
        document += ["", f"## {split}", "", *lines]
        if split == "leave_one_out":
            document += ["", "Targets (issue #9):", "", *targets(loaded)]
        if len(seeds) > 1:
            per_seed = {seeds[0]: loaded}
            again = [s for s in strategies if s in seed_strategies]
            again_baselines = [b for b in baselines if b in seed_baselines]
            for seed in seeds[1:]:
                extra = run_split(
                    split,
                    data_dir,
                    output,
                    options.budget,
                    again,
                    again_baselines,
                    seed,
                    options.jobs,
                )
                per_seed[seed] = load_results(extra)
            popularity = float(next(iter(loaded.values()))["popularity"]["overall"]["ndcg@10"])
            document += ["", f"### {split}: over seeds {options.seeds}", ""]
            document += seed_summary(per_seed, popularity)
    total = (time.perf_counter() - started) / 60
    document += ["", f"Total wall time of this invocation: {total:.0f} min."]
    path = output / "quality.md"
    path.write_text("\n".join(document) + "\n")
    print("\n".join(document))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
