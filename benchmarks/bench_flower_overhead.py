"""Round overhead of a Flower simulation vs the in-process ``fellrec fit``, on the same work.

Both run the same tiny config (a 3-layer BERT built from a config, the synthetic catalog, 3 clients)
for ``--rounds`` rounds, one after the other in this process; the figures are wall-clock seconds of
the whole run (training, validation, test) and the extra seconds per round of the simulation.

    python benchmarks/bench_flower_overhead.py --rounds 2,4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    """Time both engines for every round count and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="2,4", help="comma-separated round counts")
    args = parser.parse_args()
    from conftest import build_tiny_encoder
    from fellrec.deploy.run_config import RunSettings
    from fellrec.deploy.simulation import simulate
    from fellrec.lightning_cli import make_cli
    from test_cli import write_tiny_config

    work = Path(tempfile.mkdtemp(prefix="fellrec-flower-bench-"))
    encoder = build_tiny_encoder(work / "encoder")
    config = write_tiny_config(work, encoder)
    rows = []
    for rounds in [int(r) for r in args.rounds.split(",")]:
        extra = ["--trainer.max_epochs", str(rounds)]
        started = time.perf_counter()
        make_cli(
            [
                "fit",
                "--config",
                str(config),
                *extra,
                "--trainer.default_root_dir",
                str(work / f"in-process-{rounds}"),
            ]
        )
        in_process = time.perf_counter() - started
        started = time.perf_counter()
        simulate(
            RunSettings(
                (str(config),),
                (*extra, "--trainer.default_root_dir", str(work / f"flower-{rounds}")),
            )
        )
        flower = time.perf_counter() - started
        rows.append((rounds, in_process, flower))
    print("| rounds | in-process fit (s) | Flower simulation (s) | ratio |")
    print("| --- | --- | --- | --- |")
    for rounds, in_process, flower in rows:
        print(f"| {rounds} | {in_process:.1f} | {flower:.1f} | {flower / in_process:.2f} |")
    if len(rows) > 1:
        (r0, a0, f0), (r1, a1, f1) = rows[0], rows[-1]
        per_round = ((f1 - f0) - (a1 - a0)) / (r1 - r0)
        print(f"\nextra seconds per round (Flower - in-process): {per_round:.2f}")
        print(f"fixed start-up of the simulation: {(f0 - a0) - per_round * r0:.1f} s")


if __name__ == "__main__":
    main()
