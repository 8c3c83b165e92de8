"""Time of one federated round (N clients, FELLRec) against centralized training of the same data.

Both runs are the quickstart job at batch 16 (MiniLM, synthetic catalog, the same training examples
and client partition); ``Centralized`` trains all examples as one client. The timed window is the
training part of a round, from ``on_train_epoch_start`` (before the federated loop's round start)
to ``on_train_epoch_end`` (after its aggregation): the train batches plus what the federation adds
per round (each client encodes the catalog with its own adapter, then aggregation). Validation is
off (``limit_val_batches=0``) so aggregation lands inside the window. Two rounds run and round 1
(warm) is timed. Runs alternate A B A B so machine drift hits both alike. Target: ratio <= 1.15.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_round_overhead.py \\
        --clients 5 --repeats 3 [--threads 1]

On a CPU box shared with other jobs, OpenMP's default (spinning) wait policy makes 2-thread
timings measure the neighbours: use ``OMP_WAIT_POLICY=PASSIVE`` or ``--threads 1``, and read the
CPU-time table as well as the wall-time one.

The breakdown splits each round into batch compute (training steps less their item-table
encodes), item-table encodes (count and seconds), aggregation and the rest (batch assembly,
Lightning's loop), and attributes the federated overhead to these parts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from federation_run import build_run, quiet

Stats = dict[str, float]


#: The timed parts; each is kept on two clocks, ``<part>_s`` (wall) and ``<part>_cpu`` (process
#: CPU time, all threads: less sensitive to other jobs on a shared machine than wall time).
PARTS = ("round", "steps", "encode", "encode_in_steps", "aggregate")
CLOCKS = {"s": time.perf_counter, "cpu": time.process_time}


class RoundTimer:
    """Times the training part of every round, with a breakdown.

    ``start`` must run before the federated loop's hooks and ``end`` after them, so the timer is
    two callbacks (:attr:`start` goes first in the callback list, :attr:`end` last).
    """

    def __init__(self) -> None:
        self.rounds: list[Stats] = []
        self._current: Stats | None = None
        self._batch_started: dict[str, float] = {}
        self._in_step = False
        timer = self

        class Start(Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                current = {f"{part}_{clock}": 0.0 for part in PARTS for clock in CLOCKS}
                current.update(batches=0.0, encodes=0.0)
                for clock, now in CLOCKS.items():
                    current[f"round_{clock}"] = -now()
                timer._current = current

            def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
                timer._instrument(pl_module, trainer)

        class End(Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                timer._batch_started = {clock: now() for clock, now in CLOCKS.items()}

            def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                assert timer._current is not None
                for clock, now in CLOCKS.items():
                    timer._current[f"steps_{clock}"] += now() - timer._batch_started[clock]
                timer._current["batches"] += 1

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                current = timer._current
                assert current is not None
                for clock, now in CLOCKS.items():
                    current[f"round_{clock}"] += now()
                timer.rounds.append(current)
                timer._current = None

        self.start = Start()
        self.end = End()

    def _timed(self, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = {clock: now() for clock, now in CLOCKS.items()}
            try:
                return function(*args, **kwargs)
            finally:
                current = self._current
                if current is not None:
                    for clock, now in CLOCKS.items():
                        elapsed = now() - started[clock]
                        current[f"{key}_{clock}"] += elapsed
                        if key == "encode" and self._in_step:
                            current[f"encode_in_steps_{clock}"] += elapsed
                    if key == "encode":
                        current["encodes"] += 1

        return wrapper

    def _instrument(self, module: Any, trainer: Any) -> None:
        # Instance attributes shadow the methods, so the module and loop call the timed versions.
        # (The sequential recommender encodes no catalog: its item vectors are a table add.)
        if hasattr(module.recommender, "encode_items"):
            module.recommender.encode_items = self._timed("encode", module.recommender.encode_items)
        step = module.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            self._in_step = True
            try:
                return step(*args, **kwargs)
            finally:
                self._in_step = False

        module.training_step = training_step
        loop = next(c for c in trainer.callbacks if type(c).__name__ == "FederatedLoop")
        loop._aggregate = self._timed("aggregate", loop._aggregate)


def run_once(
    strategy: str, args: argparse.Namespace, work: Path, tag: str
) -> tuple[Stats, dict[str, int]]:
    timer = RoundTimer()
    trainer, model, data, _loop = build_run(
        work / f"run-{strategy}-{tag}",
        strategy=strategy,
        num_clients=args.clients,
        rounds=args.round + 1,
        num_users=args.users,
        num_items=args.items,
        max_train_examples=args.max_train_examples,
        partition=args.partition,
        batch_size=args.batch_size,
        validate=False,
        recommender=args.recommender,
        cache_dir=work / "cache",
        first_callbacks=[timer.start],
        callbacks=[timer.end],
    )
    trainer.fit(model, datamodule=data)
    sizes = data.client_sizes()
    info = {
        "examples": int(sizes.sum()),
        "nonempty_clients": int((sizes > 0).sum()),
        "items": model.num_items,
    }
    return timer.rounds[args.round], info


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{min(values):6.2f} .. {max(values):6.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--recommender", default="sequential", help="sequential or encoder")
    parser.add_argument("--strategy", default="fellrec", help="federated strategy (A)")
    parser.add_argument("--baseline", default="centralized", help="baseline strategy (B)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round", type=int, default=1, help="timed round (earlier ones warm up)")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--max-train-examples", type=int, default=1024)
    parser.add_argument("--partition", default="kmeans")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--target", type=float, default=1.15)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(args.threads)

    names = [args.strategy, args.baseline]
    results: dict[str, list[Stats]] = {name: [] for name in names}
    info: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fellrec-bench-round-") as tmp:
        work = Path(tmp)
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                stats, info = run_once(name, args, work, str(r))
                results[name].append(stats)
                print(
                    f"  repeat {r} {name}: round {args.round} {stats['round_s']:.2f} s "
                    f"({stats['round_cpu']:.2f} s CPU) "
                    f"({int(stats['batches'])} batches, {int(stats['encodes'])} encodes)",
                    file=sys.stderr,
                    flush=True,
                )

    print(
        f"clients={args.clients} examples={info['examples']} "
        f"(clients with data: {info['nonempty_clients']}) items={info['items']} "
        f"batch={args.batch_size} partition={args.partition} threads={args.threads} "
        f"repeats={args.repeats}; round {args.round}, training part only"
    )
    for clock, title in (("s", "wall seconds"), ("cpu", "CPU seconds (all threads)")):
        report(results, names, clock, title, args.target)


def report(
    results: dict[str, list[Stats]], names: list[str], clock: str, title: str, target: float
) -> None:
    """Print the breakdown table, the ratio and the overhead attribution on one clock."""

    def part(stats: Stats, name: str) -> float:
        return stats[f"{name}_{clock}"]

    def batch_compute(s: Stats) -> float:
        return part(s, "steps") - part(s, "encode_in_steps")

    def other(s: Stats) -> float:
        outside = part(s, "encode") - part(s, "encode_in_steps")
        return part(s, "round") - part(s, "steps") - part(s, "aggregate") - outside

    rows: list[tuple[str, Callable[[Stats], float]]] = [
        ("round (timed window)", lambda s: part(s, "round")),
        ("  batch compute", batch_compute),
        ("  item-table encodes", lambda s: part(s, "encode")),
        ("  aggregation", lambda s: part(s, "aggregate")),
        ("  other (batching, loop)", other),
        ("per batch compute", lambda s: batch_compute(s) / s["batches"]),
        ("per encode", lambda s: part(s, "encode") / max(1.0, s["encodes"])),
    ]
    width = 26
    print(f"\n{title}: median [min .. max]")
    print(f"{'':<{width}} | {names[0]:^24} | {names[1]:^24} | difference (median)")
    for label, get in rows:
        a = [get(s) for s in results[names[0]]]
        b = [get(s) for s in results[names[1]]]
        diff = statistics.median(a) - statistics.median(b)
        print(f"{label:<{width}} | {summary(a):^24} | {summary(b):^24} | {diff:+.2f}")
    for label, key in (("batches", "batches"), ("item-table encodes", "encodes")):
        a_count = int(results[names[0]][0][key])
        b_count = int(results[names[1]][0][key])
        print(f"{label:<{width}} | {a_count:^24} | {b_count:^24} | {a_count - b_count:+d}")

    pairs = list(zip(results[names[0]], results[names[1]], strict=True))
    ratios = [part(a, "round") / part(b, "round") for a, b in pairs]
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio <= target else "misses"
    print(
        f"ratio {names[0]}/{names[1]} (pairwise): median {ratio:.3f} "
        f"[{min(ratios):.3f} .. {max(ratios):.3f}] ({verdict} the target <= {target})"
    )
    # Where the overhead goes: extra encodes, batch compute (more, partial batches), the rest.
    medians = {
        name: [statistics.median(get(s) for s in results[n]) for n in names] for name, get in rows
    }
    total, encodes, batches, aggregate, rest = (
        medians[name][0] - medians[name][1]
        for name in (
            "round (timed window)",
            "  item-table encodes",
            "  batch compute",
            "  aggregation",
            "  other (batching, loop)",
        )
    )
    print(
        f"overhead {total:+.2f} (medians) = encodes {encodes:+.2f} + batch compute {batches:+.2f} "
        f"+ aggregation {aggregate:+.2f} + other {rest:+.2f}"
    )
    no_encode = [
        (part(a, "round") - part(a, "encode")) / (part(b, "round") - part(b, "encode"))
        for a, b in pairs
    ]
    print(f"ratio without item-table encodes: median {statistics.median(no_encode):.3f}")


if __name__ == "__main__":
    main()
