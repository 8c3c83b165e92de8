"""Per-step cost of a block server process (``model.transport: process``) against ``local``.

Runs the same ``fellrec fit`` job (the quickstart config: synthetic catalog, 5 clients, one round,
no validation) with the middle blocks in process and in a block server process started by the
run, alternating over ``--repeats`` so machine drift hits both alike, and prints one Markdown
table: median training step, the per-repeat ratio of medians (process / local), tensor bytes per
step (what the transport contract carries; equal for both), bytes on the connection per step
(pickled forward, backward and step messages: the tensors and control values such as the random
state) and per round (the server-held LoRA rows fetched at the round's end and loaded after the
aggregation, the round start, optimizer states for the checkpoint), and the fit's wall time (the
process run's includes starting its server and building the middle blocks there).

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_block_server.py \\
        --backbone minilm --repeats 3

Both runs use the same cores: on a 2-core machine the server and the client take turns (one waits
while the other computes), so the ratio measures the messaging, not a second machine's help.
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

REPO = Path(__file__).resolve().parents[1]
TRANSPORTS = ("local", "process")
#: Requests a training step sends; the others happen once per round (or once per run).
STEP_REQUESTS = ("forward", "backward", "step")


def run(transport: str, args: argparse.Namespace, directory: Path) -> dict:
    """One ``fellrec fit`` with ``transport``; the probe's record and the wall time."""
    probe = directory / "probe"
    callback = json.dumps(
        [
            {
                "class_path": "block_server_probe.BlockServerProbe",
                "init_args": {"directory": str(probe)},
            }
        ]
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
        "--model.transport",
        transport,
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
        "--data.cache_dir",
        str(args.cache_dir),
        "--trainer.callbacks+",
        callback,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{transport} failed:\n{result.stderr[-4000:]}")
    record: dict = json.loads((probe / "probe.json").read_text())
    record["fit_seconds"] = seconds
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--examples", type=int, default=320, help="training examples (all clients)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fellrec-bench-cache"
    )
    args = parser.parse_args()
    records: dict[str, list[dict]] = {t: [] for t in TRANSPORTS}
    for repeat in range(args.repeats):
        for transport in TRANSPORTS:
            with tempfile.TemporaryDirectory() as tmp:
                records[transport].append(run(transport, args, Path(tmp)))
                print(f"repeat {repeat}: {transport} done", file=sys.stderr)

    def median_step(record: dict) -> float:
        return statistics.median(record["step_seconds"][1:])  # the first step warms up

    ratios = [
        median_step(p) / median_step(loc)
        for loc, p in zip(records["local"], records["process"], strict=True)
    ]
    print(f"backbone {args.backbone}, {args.examples} examples, {args.repeats} repeats\n")
    print(
        "| transport | median step (s) | process / local per repeat | tensor bytes per step "
        "| connection bytes per step | connection bytes per round | fit wall time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for transport in TRANSPORTS:
        runs = records[transport]
        steps = [median_step(r) for r in runs]
        count = len(runs[-1]["step_seconds"])
        wire = runs[-1]["wire_bytes"]
        per_step = per_round = "-"
        if wire is not None:
            stepping = sum(v for k, v in wire.items() if k in STEP_REQUESTS)
            per_step = f"{stepping / count / 1024:.0f} KiB"
            per_round = f"{(sum(wire.values()) - stepping) / 1024:.0f} KiB"  # one round
        print(
            f"| {transport} | {statistics.median(steps):.3f} "
            f"(min {min(steps):.3f}, max {max(steps):.3f})"
            f" | {', '.join(f'{r:.2f}' for r in ratios) if transport == 'process' else '-'}"
            f" | {runs[-1]['tensor_bytes'] / count / 1024:.0f} KiB"
            f" | {per_step} | {per_round}"
            f" | {statistics.median(r['fit_seconds'] for r in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
