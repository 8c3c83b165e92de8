"""``fellrec attack --rounds``: the server reads item sets from exchanged item components.

A tiny sequential federation (real Lightning, a tiny BERT, 3 clients of 20 synthetic users over a
300-item catalog: each client holds about half of the items) where the answer is known: without
a defence the server separates each client's items from the rest; with the biases started at
zero and strong noise on everything a client sends, it is at chance. ~15 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fellrec.cli import main


def attack(directory: Path, backbone: Path, items: dict) -> dict:
    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(directory / "run"), "precision": "32-true"},
        "model": {"backbone": str(backbone), "recommender": "sequential", "items": items},
        "data": {
            "dataset": {
                "format": "synthetic",
                "options": {"num_users": 60, "num_items": 300, "num_categories": 4},
            },
            "history_length": 4,
            "window_stride": 4,
            "num_clients": 3,
            "partition": "iid",
            "batch_size": 8,
            "cache_dir": str(directory.parent / "cache"),
        },
        "loop": {"strategy": {"class_path": "fellrec.federation.strategies.Local"}},
    }
    path = directory / "config.yaml"
    directory.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    args = ["attack", "--config", str(path), "--rounds", "1", "--k-fronts", "0"]
    main([*args, "--public-texts", "20", "--victims", "4", "--shortlist", "4"])
    return json.loads((directory / "run" / "privacy.json").read_text())["privacy"]


@pytest.fixture(scope="module")
def undefended(tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("attack")
    return attack(root / "undefended", tiny_encoder_dir, {"bias_init": "log_popularity"})


def test_without_a_defence_the_server_reads_each_clients_items(undefended):
    parameters = undefended["parameters"]
    for client in parameters["initial"]:
        assert 100 < client["members"] < 250  # both groups are large: AUC is meaningful
        bias = client["signals"]["bias"]
        # The starting biases are log(1 + count): the server inverts them exactly.
        assert bias["auc"] == 1.0 and bias["counts_exact"] == 1.0
        assert bias["spearman"] == pytest.approx(1.0)
    (trained,) = parameters["rounds"]
    for client in trained["clients"]:
        assert client["signals"]["bias"]["auc_either"] > 0.95
        # Well above chance (0.5) after one round of a few steps:
        assert client["signals"]["bias_update"]["auc_either"] > 0.7
        assert client["signals"]["id_update"]["auc_either"] > 0.7
    # The example count is the client's window count; windows of stride 4 size its data.
    (report,) = undefended["reports"]["rounds"]
    for client in report["clients"]:
        assert client["windows_exact"] and client["relative_error"] < 0.25
    assert undefended["front_copy"]["parameters"] == "round start"


def test_zero_biases_and_strong_noise_leave_the_server_at_chance(tmp_path, tiny_encoder_dir):
    defended = attack(
        tmp_path / "defended",
        tiny_encoder_dir,
        {"bias_init": "zeros", "share_noise_ids": 1.0, "share_noise_bias": 5.0},
    )
    parameters = defended["parameters"]
    for client in parameters["initial"]:
        assert client["signals"]["bias"]["auc"] == 0.5  # all biases equal: nothing to rank
    for client in parameters["rounds"][0]["clients"]:
        for name, scores in client["signals"].items():
            assert 0.35 < scores["auc"] < 0.65, (client["client"], name, scores["auc"])
