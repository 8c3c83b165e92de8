"""Claim: the server's middle blocks sharded over 2 processes train like one process.

``--trainer.strategy model_parallel`` (FSDP2 on CPU/gloo) trains and evaluates exactly like one
process, and each process holds half the middle blocks' parameters.

Real ``fellrec fit`` processes on a tiny BERT (the sequential recommender, the default) and a tiny
LLaMA (the generative one: training, beam search and grounding through sharded blocks). Batch
sizes leave some process without a row of some batches, so stand-in rows keep the processes'
collectives in step. Dropout is off: its draws differ per process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import build_tiny_encoder, build_tiny_llama
from fellrec.training.records.results import RESULTS_FILE
from test_cli import run_cli, write_tiny_config, write_tiny_generative_config

SHARDED = ["--trainer.devices", "2", "--trainer.strategy", "model_parallel"]


def fit(config: Path, root: str, *extra: str) -> dict:
    result = run_cli(
        ["fit", "--config", str(config), "--trainer.default_root_dir", root, *extra],
        config.parent,
        600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((config.parent / root / RESULTS_FILE).read_text())


def assert_same_run(
    one: dict,
    two: dict,
    directory: Path,
    tolerance: float = 1e-5,
    adapters_of: str = "one",
    run: str = "two",
) -> None:
    """Same losses, per-client and overall metrics and exported adapters, to ``tolerance``.

    ``two`` is the run in ``directory / run``; ``adapters_of`` names the run whose adapters its
    adapters must equal (default ``one``).
    """
    assert two["rounds_run"] == one["rounds_run"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=tolerance)
    for client, row in one["clients"].items():
        assert two["clients"][client] == pytest.approx(row, abs=tolerance)
    assert two["overall"] == pytest.approx(one["overall"], abs=tolerance)
    files = sorted((directory / adapters_of / "adapters").glob("client_*/*.safetensors"))
    assert files
    for file in files:
        a = load_file(file)
        b = load_file(directory / run / file.relative_to(directory / adapters_of))
        assert set(a) == set(b)
        for key in a:
            assert (a[key] - b[key]).abs().max() <= tolerance, (file, key)


@pytest.mark.slow
def test_sharded_server_blocks_train_like_one_process_and_resume(tmp_path):
    encoder = build_tiny_encoder(tmp_path / "encoder", dropout=0.0, num_layers=4)
    # 40 examples per client in batches of 3: each client's last batch has one row, so one of
    # the two processes trains on a stand-in; 17 evaluation users per batch leave one alone too.
    config = write_tiny_config(tmp_path, encoder, batch_size=3, eval_batch_size=17)
    one = fit(config, "one")
    two = fit(config, "two", *SHARDED)
    assert_same_run(one, two, tmp_path)
    sharding = two["resources"]["measured"]["sharding"]
    assert sharding["blocks"] == 2 and sharding["processes"] == 2  # 4 blocks, 1 front, 1 back
    ratio = sharding["parameter_bytes_per_process"] / sharding["parameter_bytes_whole"]
    assert ratio == pytest.approx(0.5, abs=0.02)
    assert sharding["gather_dtype"] == "float32"
    assert "sharding" not in one["resources"]["measured"]
    # The client's front and back blocks sharded too (the item-token inputs train through them).
    both = fit(config, "both", *SHARDED, "--model.shard_client_blocks", "true")
    assert both["resources"]["measured"]["sharding"]["blocks"] == 4
    assert_same_run(one, both, tmp_path, run="both")
    assert two["privacy"]["error"].startswith("not run")
    resumed = fit(
        config, "resumed", *SHARDED, "--ckpt_path", str(tmp_path / "two/checkpoints/round-0.ckpt")
    )
    assert resumed["overall"] == pytest.approx(two["overall"], abs=1e-7)
    assert resumed["history"][-1]["train_loss"] == two["history"][-1]["train_loss"]
    # bf16 mixed precision: the sharded blocks gather and compute in bfloat16; the run stays
    # within bfloat16's rounding of the float32 one.
    bf16 = fit(config, "bf16", *SHARDED, "--trainer.precision", "bf16-mixed")
    assert bf16["resources"]["measured"]["sharding"]["gather_dtype"] == "bfloat16"
    for a, b in zip(
        one["history"][-1]["train_loss"], bf16["history"][-1]["train_loss"], strict=True
    ):
        assert b == pytest.approx(a, rel=2e-2)


@pytest.mark.slow
def test_sharded_encoder_with_fedprox_trains_like_one_process(tmp_path):
    # The RecFormer-style encoder encodes the catalog with every client's adapter each round
    # (through the sharded blocks); FedProx adds its proximal term, whose sharded rows each
    # process computes for its own part. Its adapters are compared with DDP's: on this path any
    # 2-process run (DDP too) ends up to ~4e-4 from one process's adapters (float32 sums in
    # another order, amplified by AdamW over two rounds), while losses and metrics agree to 1e-5.
    encoder = build_tiny_encoder(tmp_path / "encoder", dropout=0.0, num_layers=4)
    config = write_tiny_config(tmp_path, encoder, batch_size=3, eval_batch_size=17)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["recommender"] = "encoder"
    settings["loop"] = {
        "strategy": {
            "class_path": "fellrec.federation.strategies.FedProx",
            "init_args": {"mu": 0.5},
        }
    }
    config.write_text(yaml.safe_dump(settings))
    one = fit(config, "one")
    fit(config, "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    two = fit(config, "two", *SHARDED)
    assert one["strategy"] == "fedprox"
    assert_same_run(one, two, tmp_path, adapters_of="ddp")


@pytest.mark.slow
def test_sharded_generative_backend_trains_and_generates_like_one_process(tmp_path):
    llama = build_tiny_llama(tmp_path / "llama", num_layers=4)
    config = write_tiny_generative_config(
        tmp_path, llama, num_clients=2, max_train_examples=30, batch_size=4, eval_batch_size=5
    )
    one = fit(config, "one")
    two = fit(config, "two", *SHARDED)
    assert_same_run(one, two, tmp_path)
    assert two["resources"]["measured"]["sharding"]["blocks"] == 2


def test_sharding_refuses_an_unsplit_run(tmp_path):
    from fellrec.models.adapters import ClientAdapters
    from fellrec.training.host.server_sharding import ShardingRequest, shard_server_blocks

    request = ShardingRequest(
        split=False,
        k_front=1,
        k_back=1,
        client_blocks=False,
        load_in_8bit=False,
        precision="32-true",
        world_size=2,
        device_type="cpu",
    )
    with pytest.raises(ValueError, match=r"model\.split_execution: true"):
        shard_server_blocks(None, request)  # type: ignore[arg-type]
    eight_bit = ShardingRequest(**{**request.__dict__, "split": True, "load_in_8bit": True})
    with pytest.raises(ValueError, match=r"model\.load_in_8bit"):
        shard_server_blocks(ClientAdapters.__new__(ClientAdapters), eight_bit)
