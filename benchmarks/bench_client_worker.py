"""What one deployed message costs a client, with and without a client worker.

In a real Flower 1.42 deployment every message runs in a fresh ``flwr-clientapp`` process. This
times exactly that process's work, side by side and interleaved, for one ``train`` message of the
quickstart config (MiniLM, client 0, one round): a fresh Python process that answers it itself
(imports, loads the base model and the data, trains) vs a fresh process that hands it to a running
client worker (:mod:`fellrec.deploy.client_worker`, the model already loaded). Flower's own
polling (~3 s per message on each side) comes on top of both and is left out.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_client_worker.py --repeats 3

``--baseline-src`` adds a third kind, interleaved with the others: the in-process answer with an
older checkout's ``src`` first on the path (for side-by-side ratios of a change to that path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-client-worker"


def child(mode: str, config: Path, root: Path, parameters: Path, address: str) -> None:
    """One message in a fresh process, as a ClientApp answers it."""
    import torch

    from fellrec.deploy.client_requests import ClientRequest
    from fellrec.deploy.client_worker import ask_worker
    from fellrec.deploy.run_config import RunSettings
    from fellrec.federation.protocol import ClientRoundConfig

    settings = RunSettings((str(config),), ("--trainer.default_root_dir", str(root)))
    if not parameters.exists():  # the set-up step: the client's initial parameters
        start = ask_worker(address, ClientRequest("describe", settings, 0)).parameters
        torch.save(start, parameters)
        return
    round_config = ClientRoundConfig(round=0, lr_scale=1.0, proximal_mu=0.0, trains=True)
    asked = ClientRequest(
        "train", settings, 0, parameters=torch.load(parameters), config=round_config
    )
    if mode == "in-process":  # as a ClientApp without a worker: the model code loads here
        from flwr.app import Context, RecordDict

        from fellrec.deploy.client_app import answer_on_node

        node = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        report = answer_on_node(asked, node)
    else:
        report = ask_worker(address, asked)
    assert report.examples > 0


def main() -> None:
    """Start a worker, time both kinds of message process, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--baseline-src", type=Path, help="an older checkout's src directory")
    parser.add_argument("--child", choices=["in-process", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--parameters", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config, args.root, args.parameters, args.address)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from flower_deployment import free_port

    work = Path(tempfile.mkdtemp(prefix="fellrec-worker-bench-"))
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "FELLREC_WORKER_KEY": KEY}
    log = open(work / "worker.log", "wb")  # noqa: SIM115 - open while the worker runs
    worker = subprocess.Popen(
        [sys.executable, "-m", "fellrec.deploy.client_worker", "--address", address],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    common = [
        sys.executable,
        __file__,
        "--config",
        str(args.config),
        "--root",
        str(work / "run"),
        "--parameters",
        str(work / "start.pt"),
        "--address",
        address,
    ]
    try:
        while "listening" not in (work / "worker.log").read_text():
            time.sleep(0.1)
        subprocess.run([*common, "--child", "worker"], env=env, check=True)  # warm: describe
        kinds = {"in-process": ("in-process", env), "worker": ("worker", env)}
        if args.baseline_src:
            path = f"{args.baseline_src.resolve()}{os.pathsep}{env.get('PYTHONPATH', '')}"
            kinds["in-process, baseline src"] = ("in-process", {**env, "PYTHONPATH": path})
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.repeats):
            for kind, (mode, kind_env) in kinds.items():
                started = time.perf_counter()
                subprocess.run([*common, "--child", mode], env=kind_env, check=True)
                times[kind].append(time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
    print(f"one train message of {args.config.name} (client 0), {args.repeats} repeats:\n")
    print("| message process | min s | median s | max s |\n| --- | --- | --- | --- |")
    for mode, values in times.items():
        low, middle, high = min(values), statistics.median(values), max(values)
        print(f"| {mode} | {low:.1f} | {middle:.1f} | {high:.1f} |")
    ratios = [a / b for a, b in zip(times["in-process"], times["worker"], strict=True)]
    print(f"\nin-process / worker, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}")
    if args.baseline_src:
        base = times["in-process, baseline src"]
        ratios = [a / b for a, b in zip(times["in-process"], base, strict=True)]
        print(f"in-process / baseline src, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
