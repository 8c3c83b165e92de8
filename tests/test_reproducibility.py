"""The same command twice gives the same run: real MiniLM, real MovieLens-100K, 2 CPU threads.

Small models do not show it (their gradients stay below the size at which torch's CPU kernels go
multi-threaded), so this runs the shipped ML-100K recipe itself, on a budget: one round over 512
training windows. Before ``rows_of`` the item-ID gradients were summed with atomic adds in thread
order, and two such runs already disagreed in round 0 (benchmarks/README.md, "Run-to-run noise").
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fit(ml100k_dir: Path, root: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "fellrec",
        "fit",
        "--config",
        str(REPO / "configs" / "ml100k-minilm-base.yaml"),
        "--config",
        str(REPO / "configs" / "ml100k-minilm-fedavg.yaml"),
        "--data.dataset.format",
        "recbole",
        "--data.dataset.path",
        str(ml100k_dir),
        "--data.split",
        "leave_one_out",
        "--data.max_train_examples",
        "512",
        "--data.num_clients",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
    ]
    # Two intra-op threads: the multi-threaded kernels are what could reorder float additions.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _training_losses(root: Path) -> dict[str, str]:
    with (root / "metrics.csv").open() as handle:
        return {
            key: value
            for row in csv.DictReader(handle)
            for key, value in row.items()
            if key.endswith("train/loss") and value
        }


def test_two_runs_of_the_same_command_train_the_same_adapters(
    ml100k_dir: Path, tmp_path: Path
) -> None:
    roots = [tmp_path / "first", tmp_path / "second"]
    for root in roots:
        result = _fit(ml100k_dir, root)
        assert result.returncode == 0, result.stderr[-3000:]
    first, second = (_training_losses(root) for root in roots)
    assert first and first == second  # the logged strings, i.e. every digit
    saved = sorted(p.relative_to(roots[0]) for p in roots[0].glob("adapters/*/*.safetensors"))
    assert len(saved) == 4  # LoRA + item components of 2 clients
    for path in saved:
        assert (roots[0] / path).read_bytes() == (roots[1] / path).read_bytes(), path
