"""Wall time and peak memory of the quickstart job as a whole process (start-up to exit).

Runs ``fellrec fit --config configs/quickstart.yaml --trainer.default_root_dir <tmp>`` (3 rounds,
5 clients, then the test and ``results.json``) in a fresh process per repeat and reads each
finished child's resources from the kernel (``os.wait4``): wall, user and system seconds and the
peak RSS of the largest process.

    HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_WAIT_POLICY=PASSIVE \\
        python benchmarks/bench_quickstart.py --repeats 3 [--threads 1]

(``OMP_WAIT_POLICY=PASSIVE`` on a CPU box shared with other jobs; see benchmarks/README.md.)

The same figures for one run with public tools:

    HF_HUB_OFFLINE=1 /usr/bin/time -v fellrec fit --config configs/quickstart.yaml \\
        --trainer.default_root_dir /tmp/fellrec-quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fellrec_command() -> list[str]:
    """The ``fellrec`` console script next to this Python, else ``python -m fellrec``."""
    script = Path(sys.executable).with_name("fellrec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fellrec"]


def run_once(
    config: Path, root: Path, log: Path, threads: int | None, extra: list[str] | None = None
) -> dict[str, float]:
    """One whole-process run; its wall/user/sys seconds and peak RSS (MiB)."""
    command = [*fellrec_command(), "fit", "--config", str(config)]
    command += ["--trainer.default_root_dir", str(root), *(extra or [])]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    if threads is not None:  # torch takes its intra-op thread count from OMP_NUM_THREADS
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "w") as out:
        started = time.perf_counter()
        pid = os.posix_spawn(command[0], command, env, file_actions=_redirect(out.fileno()))
        _pid, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"fellrec fit failed (exit {code}):\n{log.read_text()[-3000:]}")
    results = json.loads((root / "results.json").read_text())
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_mib": usage.ru_maxrss / scale,
        "test_ndcg10": float(results["overall"]["ndcg@10"]),
    }


def _redirect(fd: int) -> list[tuple[int, int, int]]:
    return [(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="prepare the data (BPR, k-means) inside every run (default: prepared once, untimed)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the runs (default: unset, torch uses one thread per core)",
    )
    args = parser.parse_args()

    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fellrec-bench-quickstart-") as tmp:
        work = Path(tmp)
        # A private data cache, prepared once outside the timed runs (`fellrec data stats`).
        os.environ["FELLREC_CACHE"] = str(work / "cache")
        if not args.fresh_cache:
            prepare = [*fellrec_command(), "data", "stats", "--config", str(args.config)]
            subprocess.run(prepare, check=True, stdout=subprocess.DEVNULL)
        for r in range(args.repeats):
            root = work / f"run-{r}"
            if args.fresh_cache:
                shutil.rmtree(work / "cache", ignore_errors=True)
            runs.append(run_once(args.config, root, work / f"run-{r}.log", args.threads))
            print(
                f"  run {r}: {runs[-1]['wall_s']:.1f} s, peak {runs[-1]['peak_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )

    threads = args.threads or "default"
    print(
        f"fellrec fit --config {args.config.name}: {args.repeats} runs, threads={threads}, "
        "min / median / max"
    )
    for key, label in (
        ("wall_s", "wall s"),
        ("user_s", "user s"),
        ("sys_s", "sys s"),
        ("peak_mib", "peak RSS MiB"),
        ("test_ndcg10", "test ndcg@10"),
    ):
        values = [run[key] for run in runs]
        print(
            f"{label:>13}: {min(values):9.3f} {statistics.median(values):9.3f} {max(values):9.3f}"
        )


if __name__ == "__main__":
    main()
