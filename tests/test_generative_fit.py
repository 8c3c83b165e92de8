"""Integration: the generative (BIGRec-style) recommender in a real federated Lightning run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from federation_helpers import tiny_run
from fellrec.federation.strategies import FedAvg, FELLRec
from fellrec.models.backends import GenerativeBackend
from fellrec.models.popularity_grounding import standardized_log_popularity, with_popularity
from fellrec.models.prompts import PromptSettings
from fellrec.training.records.results import RESULTS_FILE

GENERATIVE = {
    "recommender": "generative",
    "prompt": PromptSettings(num_beams=2, max_new_tokens=6, max_prompt_tokens=96, item_noun="item"),
    "k_front": 1,
    "k_back": 1,
}


@pytest.mark.parametrize("strategy", [FELLRec(), FedAvg()], ids=["fellrec", "fedavg"])
def test_generative_federation_two_clients_two_rounds(tmp_path, tiny_llama_dir, strategy):
    trainer, model, data, loop = tiny_run(
        tmp_path,
        tiny_llama_dir,
        strategy,
        rounds=2,
        num_clients=2,
        model_options=GENERATIVE,
        data_options={"max_train_examples": 32, "eval_batch_size": 8},
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert results["rounds_run"] == 2
    assert set(results["clients"]) == {"0", "1"}
    assert all(loss is not None for loss in results["history"][-1]["train_loss"])
    for k in (5, 10, 20):
        assert 0.0 <= results["overall"][f"ndcg@{k}"] <= 1.0
    assert results["config"]["model"]["recommender"] == "generative"
    assert results["resources"]["split"] is True
    assert (tmp_path / "adapters" / "client_1" / "adapter_model.safetensors").exists()


def test_generative_run_is_tested_again_from_its_checkpoint(tmp_path, tiny_llama_dir):
    # The prompt settings and the split travel in the checkpoint's hyper-parameters, which
    # LightningCLI parses back into the model config for `fellrec test --ckpt_path`.
    from fellrec.cli import main
    from test_cli import write_tiny_generative_config

    config = write_tiny_generative_config(
        tmp_path, tiny_llama_dir, num_clients=2, max_train_examples=16
    )
    root = tmp_path / "run"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)])
    first = json.loads((root / RESULTS_FILE).read_text())
    checkpoint = root / "checkpoints" / "last.ckpt"

    def retest(*flags: str) -> dict:
        """``fellrec test`` of the checkpoint with ``flags``; its results (test-<n>)."""
        run = ["--config", str(config), "--trainer.default_root_dir", str(root)]
        main(["test", *run, "--ckpt_path", str(checkpoint), *flags])
        runs = sorted(root.glob("test-*"), key=lambda path: int(path.name.split("-")[1]))
        return json.loads((runs[-1] / RESULTS_FILE).read_text())

    again = retest()
    assert again["config"]["model"]["prompt"]["num_beams"] == 2
    assert again["resources"]["split"] is True
    assert set(again["clients"]) == set(first["clients"])
    assert again["overall"] == pytest.approx(first["overall"], abs=1e-6)
    # The same checkpoint re-scored with BIGRec's popularity term: a typed setting beside
    # --ckpt_path wins over the checkpoint's (gamma 0), and the record says which was used.
    rescored = retest("--model.prompt.popularity_gamma", "1.5")
    assert (root / "test-1").is_dir()
    assert rescored["config"]["model"]["prompt"]["popularity_gamma"] == 1.5
    assert again["config"]["model"]["prompt"]["popularity_gamma"] == 0.0
    # Grounding is evaluation only: the same checkpoint re-scored by mean-pooled title states,
    # from a second item table of its own (cached beside the first).
    tables = sorted((tmp_path / "cache").rglob("item-embeddings-*.pt"))
    assert len(tables) == 1
    regrounded = retest("--model.prompt.grounding", "mean")
    assert len(sorted((tmp_path / "cache").rglob("item-embeddings-*.pt"))) == 2
    assert regrounded["config"]["model"]["prompt"]["grounding"] == "mean"
    assert again["config"]["model"]["prompt"]["grounding"] == "last_token"
    assert set(regrounded["clients"]) == set(first["clients"])


def test_popularity_term_ranks_with_each_clients_own_counts(tmp_path, tiny_llama_dir):
    prompt = dataclasses.replace(GENERATIVE["prompt"], popularity_gamma=0.5)
    trainer, model, data, loop = tiny_run(
        tmp_path,
        tiny_llama_dir,
        FELLRec(),
        rounds=1,
        num_clients=2,
        model_options={**GENERATIVE, "prompt": prompt},
        data_options={"max_train_examples": 16, "eval_batch_size": 8},
    )
    trainer.fit(model, datamodule=data)
    backend = model.backend
    assert isinstance(backend, GenerativeBackend)
    own = [standardized_log_popularity(data.training_item_counts(c)) for c in (0, 1)]
    assert not torch.equal(own[0], own[1])  # two clients, two different counts
    for slot, client in enumerate(model.held_clients):
        assert torch.equal(backend.log_popularity[slot], own[client].float())
    histories = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    consumed = torch.zeros(2, model.num_items, dtype=torch.bool)
    consumed[0, :3], consumed[1, 3:7] = True, True
    for slot in (0, 1):
        scores = backend.scores(slot, histories, consumed)
        # The same adapter, still active; consumed items are left out of the standardization.
        plain = model.recommender.recommend(histories, consumed)
        assert torch.equal(scores, with_popularity(plain, own[slot].float(), 0.5, False))
        assert scores[consumed].eq(float("-inf")).all()
