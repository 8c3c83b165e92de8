"""MovieLens-100K in silos: a loopback Flower deployment against the simulation of the same silos.

Exports ML-100K's 5 k-means clients as silo files (``fellrec data export-silos``), simulates those
silos in one process (``fellrec fit``), then deploys them on loopback: a SuperLink, and per client
a SuperNode and a client worker in a directory of its own that holds only its silo, the public
catalog and the configs (the export is deleted first; each party has its own data cache). It
prints both runs' per-round times, where the deployed round's time goes, and how far the deployed
per-client metrics, losses and selected parameters are from the simulation's.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_silo_deployment.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def copy_into(directory: Path, files: list[str], source: Path) -> Path:
    """A party's directory with copies of ``files`` (relative to ``source``)."""
    for relative in files:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target)
    return directory


def main() -> None:
    """Export, simulate, deploy, compare; print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--split", default="leave_one_out")
    parser.add_argument("--strategy", default="FELLRec")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default tmp)")
    args = parser.parse_args()
    import yaml
    from safetensors.torch import load_file

    from fellrec.cli import main as fellrec
    from fellrec.data.fetch import fetch_ml100k
    from fellrec.data.pipeline import default_cache_dir
    from fellrec.lightning_cli import make_cli
    from fellrec.training.rounds.loop import FederatedLoop
    from flower_deployment import Deployment

    work = (args.work or Path(tempfile.mkdtemp(prefix="fellrec-silo-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ml100k = fetch_ml100k(default_cache_dir() / "datasets")
    os.chdir(work)  # the export's paths are relative, as every party's will be
    shutil.copy2(ROOT / "configs" / "ml100k-minilm-base.yaml", "base.yaml")
    overrides = [
        "--trainer.max_epochs",
        str(args.rounds),
        "--model.privacy_probe",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--loop.strategy",
        f"fellrec.federation.strategies.{args.strategy}",
    ]
    started = time.perf_counter()
    fellrec(
        [
            *("data", "export-silos", "--config", "base.yaml"),
            *("--data.dataset.format", "recbole", "--data.dataset.path", str(ml100k)),
            *("--data.split", args.split, "--output", "silos"),
        ]
    )
    exported = time.perf_counter() - started
    shared = ["base.yaml", "silos/silos.yaml"]
    silo_files = yaml.safe_load(Path(shared[1]).read_text())["data"]["silos"]
    num_clients = len(silo_files)

    started = time.perf_counter()
    cli = make_cli(
        [
            *("fit", "--config", shared[0], "--config", shared[1]),
            *overrides,
            *("--trainer.default_root_dir", "simulated"),
        ]
    )
    simulated_seconds = time.perf_counter() - started
    loop = next(c for c in cli.trainer.callbacks if isinstance(c, FederatedLoop))
    assert loop.selection is not None and loop.selection.best_parameters is not None
    selected = loop.selection.best_parameters.clone()
    simulated = json.loads((work / "simulated" / "results.json").read_text())

    parties = work / "parties"
    server = copy_into(parties / "server", shared, work)
    clients = [
        copy_into(parties / f"client-{c}", [*shared, "silos/catalog.csv", silo_files[c]], work)
        for c in range(num_clients)
    ]
    with Deployment(work / "flower") as deployment:
        deployment.start_superlink(cwd=server)
        started = time.perf_counter()
        for c, directory in enumerate(clients):
            own = {"FELLREC_CACHE": str(directory / ".cache")}
            deployment.start_worker(c, cwd=directory, env=own, timeout=300)
            deployment.start_supernode(c, num_clients, silo=silo_files[c], cwd=directory, env=own)
        deployment.wait_online(num_clients)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        run_id, _ = deployment.run(
            ROOT / "flower-app",
            {
                "fellrec-config": ",".join(shared),
                "fellrec-overrides": " ".join([*overrides, "--trainer.default_root_dir deployed"]),
                "wait-timeout": 600.0,
            },
            timeout=7200,
        )
        while deployment.status(run_id)["status"].startswith(("pending", "starting", "running")):
            time.sleep(2)
        deployed_seconds = time.perf_counter() - started
        status = deployment.status(run_id)["status"]
    deployed = json.loads((server / "deployed" / "results.json").read_text())

    metric_gap = max(
        abs(deployed["clients"][c][m] - simulated["clients"][c][m])
        for c in simulated["clients"]
        for m in simulated["clients"][c]
    )
    loss_gap = max(
        abs(a - b)
        for d, s in zip(deployed["history"], simulated["history"], strict=True)
        for a, b in zip(d["train_loss"], s["train_loss"], strict=True)
        if a is not None and b is not None
    )
    chosen = load_file(str(server / "deployed" / "client_parameters.safetensors"))
    parameter_gap = max(
        float((chosen[f"client_{c}"] - selected[c]).abs().max()) for c in range(num_clients)
    )
    print(f"\nML-100K, {args.split}, {num_clients} silos, {args.strategy}, {args.rounds} rounds")
    print(f"status {status}; export {exported:.1f} s; workers and nodes up {startup:.1f} s")
    print(
        f"whole run: simulation {simulated_seconds:.1f} s (one process, incl. loading the model "
        f"and data), deployment {deployed_seconds:.1f} s (flwr run to completion; the workers "
        "had loaded nothing yet)\n"
    )
    print("| round | simulation train s | val s | deployment train s | val s | ratio (round) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for d, s in zip(deployed["history"], simulated["history"], strict=True):
        print(
            f"| {d['round']} | {s['train_seconds']:.1f} | {s['val_seconds']:.1f} | "
            f"{d['train_seconds']:.1f} | {d['val_seconds']:.1f} | "
            f"{d['seconds'] / s['seconds']:.2f} |"
        )
    print(
        f"\nlargest gap deployed vs simulated: per-client test metric {metric_gap:.2e}, "
        f"training loss {loss_gap:.2e}, selected parameters {parameter_gap:.2e}; selected rounds "
        f"{deployed['client_best_rounds']} vs {simulated['client_best_rounds']}"
    )
    print(
        "test ndcg@10 overall: deployed {:.4f}, simulated {:.4f}; per client {}".format(
            deployed["overall"]["ndcg@10"],
            simulated["overall"]["ndcg@10"],
            [round(deployed["clients"][c]["ndcg@10"], 4) for c in sorted(deployed["clients"])],
        )
    )
    if args.work is None:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
