"""``fellrec cost`` and ``fellrec attack`` on tiny models and tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig

from fellrec.cli import main


def write_config(
    directory: Path, backbone: Path, generative: bool, recommender: str = "encoder"
) -> Path:
    model: dict = {
        "backbone": str(backbone),
        "recommender": recommender,
        "max_history_tokens": 48,
        "max_item_tokens": 8,
        "k_front": 1,
        "k_back": 1,
        "lora": {"dropout": 0.0},
    }
    if generative:
        model |= {
            "recommender": "generative",
            "prompt": {"item_noun": "item", "max_prompt_tokens": 96},
            "lora": {"dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        }
    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(directory / "run"), "precision": "32-true"},
        "model": model,
        "data": {
            "dataset": {
                "format": "synthetic",
                "options": {"num_users": 60, "num_items": 40, "num_categories": 4},
            },
            "history_length": 4,
            "num_clients": 3,
            "partition": "iid",
            "batch_size": 8,
            "max_train_examples": 60,
            "cache_dir": str(directory / "cache"),
        },
    }
    path = directory / ("generative.yaml" if generative else f"{recommender}.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def test_cost_prints_the_table_for_a_tiny_decoder(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path, tiny_llama_dir, generative=True)
    main(["cost", "--config", str(config)])
    out = capsys.readouterr().out
    assert "llama (decoder), 4 blocks, hidden 32" in out
    assert "micro-batch 8 x 96 tokens, 3 clients" in out  # T = model.prompt.max_prompt_tokens
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("k_front"))
    rows = [line.split()[0] for line in lines[header + 2 : header + 6]]
    assert rows == ["unsplit", "0", "1", "2"]  # k_front <= L - 1 - k_back = 2
    assert "configured split (k_front=1, k_back=1)" in out
    assert "padded to the maximum length (96 tokens)" in out  # what the estimate assumes
    assert "resources.measured.bytes_per_step" in out


def test_cost_of_an_encoder_with_given_k_fronts(tmp_path, tiny_encoder_dir, capsys):
    config = write_config(tmp_path, tiny_encoder_dir, generative=False)
    main(["cost", "--config", str(config), "--k-fronts", "1,0", "--base-dtype", "bf16"])
    out = capsys.readouterr().out
    assert "bert (encoder), 3 blocks, hidden 32" in out and "x 48 tokens" in out
    assert "base bf16, activations 16-bit" in out


def test_cost_from_an_architecture_file_without_weights(tmp_path, tiny_encoder_dir, capsys):
    config = write_config(tmp_path, tiny_encoder_dir, generative=False)
    architecture = tmp_path / "llama-7b.json"
    LlamaConfig().to_json_file(architecture)  # the defaults are LLaMA-7B's architecture
    args = ["cost", "--config", str(config), "--architecture", str(architecture)]
    main([*args, "--model.backbone", "nobody/llama-7b", "--model.lora.target_modules", "[q_proj]"])
    out = capsys.readouterr().out
    assert "llama (decoder), 32 blocks, hidden 4096, vocab 32000, 6.74 B parameters" in out


def test_cost_of_an_unknown_hub_name_offline_fails_clearly(tmp_path, tiny_encoder_dir, capsys):
    config = write_config(tmp_path, tiny_encoder_dir, generative=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["cost", "--config", str(config), "--model.backbone", "nobody/no-such-model"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.backbone='nobody/no-such-model'" in err and "--architecture" in err


def test_cost_rejects_a_k_front_the_model_cannot_split_at(tmp_path, tiny_encoder_dir, capsys):
    config = write_config(tmp_path, tiny_encoder_dir, generative=False)
    with pytest.raises(SystemExit):
        main(["cost", "--config", str(config), "--k-fronts", "0,2"])
    assert "--k-fronts [2]" in capsys.readouterr().err


def test_attack_merges_privacy_into_existing_results(tmp_path, tiny_llama_dir, capsys):
    config = write_config(tmp_path, tiny_llama_dir, generative=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"strategy": "fellrec", "overall": {"a": 1}}))
    main(["attack", "--config", str(config), "--public-texts", "40", "--victims", "10"])
    results = json.loads((run / "results.json").read_text())
    assert results["strategy"] == "fellrec" and results["overall"] == {"a": 1}
    privacy = results["privacy"]
    assert privacy["attack"] == "linear-inversion"
    assert (privacy["public_texts"], privacy["victims"]) == (40, 10)
    assert [p["k_front"] for p in privacy["curve"]] == [0, 1, 2, 3]
    assert privacy["curve"][0]["token_recovery"] >= 0.95
    # The fixed prompt template is not content: fewer content tokens than real tokens.
    assert all(0 < p["content_tokens"] < p["tokens"] for p in privacy["curve"])
    assert "token recovery" in capsys.readouterr().out


def test_attack_without_results_writes_privacy_json(tmp_path, tiny_encoder_dir):
    config = write_config(tmp_path, tiny_encoder_dir, generative=False)
    output = tmp_path / "elsewhere"
    args = ["attack", "--config", str(config), "--k-fronts", "0,2", "--output", str(output)]
    main([*args, "--public-texts", "30", "--victims", "8"])
    privacy = json.loads((output / "privacy.json").read_text())["privacy"]
    assert [p["k_front"] for p in privacy["curve"]] == [0, 2]
    assert privacy["curve"][0]["tokens"] > privacy["curve"][0]["content_tokens"] > 0
    assert not (tmp_path / "run").exists()


def test_cost_of_the_sequential_recommender_counts_its_item_components(
    tmp_path, tiny_encoder_dir, capsys
):
    config = write_config(tmp_path, tiny_encoder_dir, False, recommender="sequential")
    main(["cost", "--config", str(config), "--k-fronts", "1"])
    out = capsys.readouterr().out
    assert "micro-batch 8 x 4 tokens" in out  # one token per history item (H = 4)
    # 40 items x 32-wide ID embeddings + 40 biases + 1 temperature, per client.
    assert "per-item components (model.items): 1.32 k trainable parameters per client" in out


def test_attack_on_item_tokens_recovers_items(tmp_path, tiny_encoder_dir):
    config = write_config(tmp_path, tiny_encoder_dir, False, recommender="sequential")
    output = tmp_path / "elsewhere"
    args = ["attack", "--config", str(config), "--k-fronts", "0,1", "--output", str(output)]
    main([*args, "--public-texts", "60", "--victims", "8"])
    privacy = json.loads((output / "privacy.json").read_text())["privacy"]
    assert privacy["inputs"] == "items"
    first = privacy["curve"][0]
    # Every real history position is an item the attacker tries to name.
    assert first["tokens"] == first["content_tokens"] > 0
    assert 0.0 <= first["token_recovery"] <= 1.0
