"""Run the README's quickstart and print the figures the README quotes from it.

The README shows the quickstart's round lines, an excerpt of its ``results.json``, its test
NDCG@10 against popularity and how long it took on which machine. This runs the same command
(``fellrec fit --config configs/quickstart.yaml``, into a temporary directory) and prints those
figures in the README's form, so that they come from a run of the current code:

    HF_HUB_OFFLINE=1 python benchmarks/readme_figures.py [--config configs/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU model, cores and load, e.g. ``AMD EPYC 9B14, 2 cores, load 1.2``."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = names[0].strip() if names else model
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{model}, {os.cpu_count()} cores{load}"


def fellrec_command() -> list[str]:
    script = shutil.which("fellrec")
    return [script] if script else [sys.executable, "-m", "fellrec"]


def excerpt(results: dict[str, Any]) -> str:
    """The README's ``results.json`` excerpt, with this run's numbers."""
    overall = results["overall"]
    client = results["clients"]["0"]
    balance = results["balance"]["ndcg@10"]
    stats = ", ".join(f'"{k}": {balance[k]:.3f}' for k in ("mean", "std", "min", "max"))
    more = ", ".join(f'"{k}": {balance[k]:.3f}' for k in ("gap", "gini", "jain"))
    return "\n".join(
        [
            f'{{"strategy": "{results["strategy"]}", "config": {{...}}, '
            f'"rounds_run": {results["rounds_run"]}, "best_round": {results["best_round"]},',
            f' "overall": {{"recall@10": {overall["recall@10"]:.4f}, '
            f'"ndcg@10": {overall["ndcg@10"]:.4f}, ..., "users": {overall["users"]}}},',
            f' "clients": {{"0": {{"users": {client["users"]}, "recall@10": ..., '
            '"ndcg@10": ...}, ...},',
            f' "balance": {{"ndcg@10": {{{stats},',
            f"                         {more}}}, ...}},",
            ' "slices": {"definition": {...}, "groups": {"popularity/tail": {"users": '
            f'{results["slices"]["groups"]["popularity/tail"]["users"]}, "ndcg@10": ...,',
            '            "ci": {"ndcg@10": [...], ...}}, ...}, "clients": {...}},',
            ' "popularity": {"overall": {...}, "clients": {...}, "balance": {...}, '
            '"slices": {...}},',
            f' "client_best_rounds": {results["client_best_rounds"]}, "history": [{{"round": 0, '
            '"train_loss": [...],',
            '   "lr": [...], "heating_weight": [...], "similarity": [[...]], "val": {...}}, ...]}',
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fellrec-readme-") as tmp:
        root = Path(tmp) / "quickstart"
        env = {**os.environ, "FELLREC_CACHE": str(Path(tmp) / "cache")}
        command = [*fellrec_command(), "fit", "--config", str(options.config)]
        command += ["--trainer.default_root_dir", str(root)]
        where = machine()
        started = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"the quickstart failed:\n{result.stderr[-3000:]}")
        log = result.stderr.splitlines()
        results = json.loads((root / "results.json").read_text())
    rounds = [line for line in log if re.match(r"round \d+: val ", line)]
    popularity = results["popularity"]["overall"]["ndcg@10"]
    print(f"# {' '.join(['fellrec', *command[len(fellrec_command()) :]])}")
    print(f"# {seconds:.0f} s wall on {where} (data prepared inside the run)\n")
    print("Round lines:\n```")
    print("\n".join(rounds))
    print("```\n\nLast line:\n```")
    print(log[-1])
    print("```\n\nresults.json:\n```json")
    print(excerpt(results))
    print("```\n")
    print(
        f"On the quickstart the test NDCG@10 is {results['overall']['ndcg@10']:.3f} against "
        f"{popularity:.3f} for the popularity baseline; it took {seconds:.0f} s on {where}."
    )


if __name__ == "__main__":
    main()
