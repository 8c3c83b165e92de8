"""Per-process memory and step time: sharded server blocks vs DDP, 1 and 2 processes.

Runs the same ``fellrec fit`` job (the quickstart: synthetic catalog, 5 clients, one round) as
one process, as 2 DDP processes (the whole model on each) and as 2 processes with the server's
middle blocks sharded (``--trainer.strategy model_parallel``), and prints one Markdown table:
parameter bytes per process (all, and the middle blocks'), peak resident (or GPU) memory per
process, and the median training step time. Runs alternate over ``--repeats`` so machine drift
hits all alike.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_sharding.py \\
        --backbone smollm2 --repeats 2

On GPUs add ``--accelerator gpu`` (and ``--precision bf16-mixed``: sharded blocks then gather in
bfloat16). Step times on a 2-core CPU compare the strategies' overhead, not their speed on
accelerators: two processes share the cores one process had.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYOUTS = {
    "1 process": ["--trainer.devices", "1"],
    "2 x DDP": ["--trainer.devices", "2", "--trainer.strategy", "ddp"],
    "2 x sharded": ["--trainer.devices", "2", "--trainer.strategy", "model_parallel"],
}


def run(layout: str, args: argparse.Namespace, directory: Path) -> list[dict]:
    """One ``fellrec fit`` in ``layout``; each process's record."""
    probe = directory / "probe"
    callback = json.dumps(
        [{"class_path": "sharding_probe.ShardingProbe", "init_args": {"directory": str(probe)}}]
    )
    command = [
        sys.executable,
        "-m",
        "fellrec",
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--model.backbone",
        args.backbone,
        "--trainer.accelerator",
        args.accelerator,
        "--trainer.precision",
        args.precision,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(directory / "run"),
        "--data.max_train_examples",
        str(args.examples),
        "--data.batch_size",
        str(args.batch_size),
        "--data.cache_dir",
        str(args.cache_dir),
        "--trainer.callbacks+",
        callback,
        *LAYOUTS[layout],
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{layout} failed:\n{result.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(probe.glob("rank-*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--examples", type=int, default=160, help="training examples (all clients)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="micro-batch (the figures in benchmarks/README.md: 16, the quickstart's until "
        "2026-12-07; at 64, 160 examples would leave every client one step)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fellrec-bench-cache"
    )
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    records: dict[str, list[list[dict]]] = {layout: [] for layout in layouts}
    for repeat in range(args.repeats):
        for layout in layouts:
            with tempfile.TemporaryDirectory() as tmp:
                records[layout].append(run(layout, args, Path(tmp)))
                print(f"repeat {repeat}: {layout} done", file=sys.stderr)
    mib = 2**20
    print(
        f"backbone {args.backbone}, {args.accelerator}, {args.precision}, "
        f"{args.examples} examples, {args.repeats} repeats\n"
    )
    print(
        "| layout | parameters per process | middle blocks per process "
        "| peak memory per process | median step (s) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for layout in layouts:
        last = records[layout][-1]
        steps = [s for runs in records[layout] for rank in runs for s in rank["step_seconds"][1:]]
        peak_key = (
            "peak_device_bytes" if last[0]["peak_device_bytes"] is not None else "peak_rss_bytes"
        )
        print(
            f"| {layout} | {max(r['parameter_bytes'] for r in last) / mib:.1f} MiB"
            f" | {max(r['middle_block_bytes'] for r in last) / mib:.1f} MiB"
            f" | {max(r[peak_key] for r in last) / mib:.0f} MiB ({peak_key.split('_')[1]})"
            f" | {statistics.median(steps):.3f} |"
        )


if __name__ == "__main__":
    main()
