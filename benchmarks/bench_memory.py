"""Peak memory of a federated run as the number of clients grows (the base model is shared).

Each run is a fresh process (so its peak RSS is its own, read by the parent with ``os.wait4``):
the quickstart model (MiniLM) on the synthetic catalog, N clients, one FELLRec round of training
and validation. Only the adapters (plus their AdamW moments and cached item tables) should grow
with N, so the target is ``peak(50) <= 1.2 x peak(2)``.

    HF_HUB_OFFLINE=1 python benchmarks/bench_memory.py --clients 2 50 --repeats 3

On a CPU box shared with other jobs add ``OMP_WAIT_POLICY=PASSIVE`` (see benchmarks/README.md);
it changes the times, not the memory.

Prints per N the peak RSS (min/median/max over repeats), the RSS after the model and adapters
were built, the adapter footprint, and the ratio of each N's median peak to the first N's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """One run in this process; writes its figures as JSON to ``args.out``."""
    sys.path.insert(0, str(HERE))
    from typing import Any

    import torch
    from lightning.pytorch.callbacks import Callback

    from federation_run import build_run, current_rss_mib, peak_rss_mib, quiet

    quiet()
    torch.set_num_threads(args.threads)
    figures: dict[str, float] = {"rss_imports_mib": current_rss_mib()}

    class Probe(Callback):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            figures["rss_model_mib"] = current_rss_mib()

    root = Path(args.root)
    trainer, model, data, _loop = build_run(
        root,
        num_clients=args.num_clients,
        rounds=1,
        num_users=args.users,
        num_items=args.items,
        max_train_examples=args.max_train_examples,
        partition=args.partition,
        validate=not args.no_val,
        recommender=args.recommender,
        cache_dir=Path(args.cache),
        callbacks=[Probe()],
    )
    if args.prepare_only:
        data.prepare_data()
        Path(args.out).write_text("{}")
        return
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    figures["fit_s"] = time.perf_counter() - start
    figures["rss_end_mib"] = current_rss_mib()
    figures["peak_self_mib"] = peak_rss_mib()
    figures["lora_params_total"] = sum(
        p.numel() for name, p in model.named_parameters() if "lora_" in name
    )
    Path(args.out).write_text(json.dumps(figures))


def run_child(base: list[str], out: Path) -> tuple[dict[str, float], float]:
    """Run one child; return its figures and its peak RSS in MiB as the kernel accounted it."""
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen([*base, "--out", str(out)], stdout=log, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out.with_suffix(".log").read_text()[-3000:]
        raise SystemExit(f"child failed (exit {proc.returncode}):\n{tail}")
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return json.loads(out.read_text()), peak


def fmt(values: list[float]) -> str:
    return f"{min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 50])
    parser.add_argument("--recommender", default="sequential", help="sequential or encoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=600, help="synthetic users")
    parser.add_argument("--items", type=int, default=400, help="synthetic items")
    parser.add_argument("--max-train-examples", type=int, default=512)
    parser.add_argument("--partition", default="iid", help="iid (every client gets data) or kmeans")
    parser.add_argument("--no-val", action="store_true", help="train only (no validation)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--target", type=float, default=1.2, help="allowed peak ratio")
    # Internal: one run in this process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results: dict[int, list[tuple[dict[str, float], float]]] = {n: [] for n in args.clients}
    with tempfile.TemporaryDirectory(prefix="fellrec-bench-memory-") as tmp:
        work = Path(tmp)
        common = [
            sys.executable,
            __file__,
            "--child",
            "--users",
            str(args.users),
            "--items",
            str(args.items),
            "--max-train-examples",
            str(args.max_train_examples),
            "--partition",
            args.partition,
            "--recommender",
            args.recommender,
            "--threads",
            str(args.threads),
            "--cache",
            str(work / "cache"),
        ] + (["--no-val"] if args.no_val else [])

        def base(n: int, tag: str) -> list[str]:
            return [*common, "--num-clients", str(n), "--root", str(work / f"run-{n}-{tag}")]

        for n in args.clients:  # build the data caches first, outside the measured runs
            run_child([*base(n, "prep"), "--prepare-only"], work / f"prep-{n}.json")
        for r in range(args.repeats):  # interleaved, so drift hits every N alike
            for n in args.clients:
                results[n].append(run_child(base(n, str(r)), work / f"run-{n}-{r}.json"))
                print(f"  run {r} N={n}: peak {results[n][-1][1]:.1f} MiB", file=sys.stderr)

    print(
        f"users={args.users} items={args.items} max_train_examples={args.max_train_examples} "
        f"partition={args.partition} validation={'no' if args.no_val else 'yes'} "
        f"threads={args.threads} repeats={args.repeats} (RSS in MiB: min median max)"
    )
    header = (
        f"{'N':>4} | {'peak RSS':^23} | {'RSS model+adapters':^23} | "
        f"{'LoRA params':>11} | {'fit s (med)':>11} | ratio"
    )
    print(header)
    print("-" * len(header))
    reference = statistics.median(peak for _, peak in results[args.clients[0]])
    for n in args.clients:
        peaks = [peak for _, peak in results[n]]
        model_rss = [fig["rss_model_mib"] for fig, _ in results[n]]
        fit_s = statistics.median(fig["fit_s"] for fig, _ in results[n])
        lora = int(results[n][0][0]["lora_params_total"])
        ratio = statistics.median(peaks) / reference
        print(
            f"{n:>4} | {fmt(peaks)} | {fmt(model_rss)} | {lora:>11,} | {fit_s:>11.1f} | {ratio:.3f}"
        )
    last = args.clients[-1]
    ratio = statistics.median(p for _, p in results[last]) / reference
    verdict = "meets" if ratio <= args.target else "misses"
    print(
        f"peak({last}) / peak({args.clients[0]}) = {ratio:.3f} ({verdict} the target "
        f"<= {args.target})"
    )


if __name__ == "__main__":
    main()
