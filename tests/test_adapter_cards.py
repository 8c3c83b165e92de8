"""Exported adapters: a model card that says what they are, and a portable base reference."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from transformers import AutoModel

from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import public_base_name
from fellrec.training.records.adapter_cards import adapter_card, describe_adapters, export_adapters


def test_public_base_name_replaces_aliases_and_keeps_the_rest():
    assert public_base_name("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert public_base_name("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_base_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert public_base_name("models/my-encoder") == "models/my-encoder"


def test_card_names_client_round_metrics_and_base():
    card = adapter_card(
        client=2,
        num_clients=5,
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        backbone_setting="minilm",
        strategy="fellrec",
        recommender="sequential",
        selected_round=1,
        rounds_run=3,
        test_metrics={"users": 59, "ndcg@10": 0.21234, "recall@10": 0.3},
        has_item_components=True,
    )
    assert card.startswith("---\nlibrary_name: peft\nbase_model: sentence-transformers/")
    assert "# fellrec adapter: client 2 of 5" in card
    assert "round 1 of the 3 rounds run" in card
    assert "| test ndcg@10 | 0.2123 |" in card and "| test users | 59 |" in card
    assert "item_components.safetensors" in card
    assert "More Information Needed" not in card


def test_describe_adapters_rewrites_the_base_and_writes_cards(tmp_path):
    folder = tmp_path / "client_0"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/venv/lib/site-packages/x/model", "r": 8})
    )
    (folder / "README.md").write_text("[More Information Needed]")
    describe_adapters(
        tmp_path,
        backbone_setting="minilm",
        strategy="fedavg",
        recommender="encoder",
        selected_rounds=[0],
        rounds_run=2,
        client_metrics={"0": {"users": 10, "ndcg@10": 0.5}},
    )
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "r": 8}
    card = (folder / "README.md").read_text()
    assert "client 0 of 1" in card and "| test ndcg@10 | 0.5000 |" in card
    assert "item_components" not in card


def test_export_adapters_saves_peft_files_and_cards_of_the_clients_asked(
    tmp_path, tiny_encoder_dir
):
    # The one export of `fellrec fit` (results.py) and a deployed client (client_session.py).
    adapters = ClientAdapters(
        AutoModel.from_pretrained(tiny_encoder_dir), LoRASettings(r=2), 2, [0, 1]
    )
    module = SimpleNamespace(
        adapters=adapters, hparams={"backbone": "minilm", "recommender": "encoder"}
    )
    exported = export_adapters(
        module,
        tmp_path,
        strategy="fellrec",
        selected_rounds=[-1, 3],
        rounds_run=4,
        client_metrics={"1": {"users": 7, "ndcg@10": 0.25}},
        clients=[1],
    )
    assert exported
    for client in (0, 1):
        config = json.loads((tmp_path / f"client_{client}" / "adapter_config.json").read_text())
        assert (tmp_path / f"client_{client}" / "adapter_model.safetensors").is_file()
        # Only the client asked for is described (a deployed client leaves the others alone).
        described = config["base_model_name_or_path"] == public_base_name("minilm")
        assert described is (client == 1)
    card = (tmp_path / "client_1" / "README.md").read_text()
    assert "client 1 of 2" in card and "recommender `encoder`" in card
    assert "round 3 of the 4 rounds run" in card and "| test ndcg@10 | 0.2500 |" in card


def test_export_adapters_does_nothing_before_the_model_is_built(tmp_path):
    module = SimpleNamespace(adapters=None, hparams={})
    exported = export_adapters(
        module,
        tmp_path / "adapters",
        strategy="fedavg",
        selected_rounds=[-1],
        rounds_run=0,
        client_metrics={},
    )
    assert not exported and not (tmp_path / "adapters").exists()


def test_a_deployed_client_exports_its_own_adapter_with_its_card(tmp_path, tiny_encoder_dir):
    # In process: the client session's final test with a selection goes through export_adapters.
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.client_requests import ClientRequest
    from fellrec.deploy.client_session import answer
    from fellrec.deploy.run_config import RunSettings
    from test_cli import write_tiny_config

    root = tmp_path / "deployed"
    settings = RunSettings(
        (str(write_tiny_config(tmp_path, tiny_encoder_dir)),),
        ("--trainer.default_root_dir", str(root)),
    )
    described = answer(ClientRequest("describe", settings, 1))
    test = ClientRequest("evaluate", settings, 1, parameters=described.parameters)
    report = answer(dataclasses.replace(test, stage="test", selection=(2, 3)))
    assert report.users > 0
    folders = sorted(path.name for path in (root / "adapters").iterdir() if path.is_dir())
    assert folders == ["client_1"]  # its own adapter only
    folder = root / "adapters" / "client_1"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_encoder_dir)  # not an alias: kept
    card = (folder / "README.md").read_text()
    assert "client 1 of 3" in card and "round 2 of the 3 rounds run" in card
    assert f"| test users | {int(report.users)} |" in card
