"""The sequential recommender: item tokens through a causal LLM, a target at every position."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, BertConfig, BertModel

from conftest import build_tiny_encoder
from federation_helpers import tiny_run
from fellrec.federation.strategies import Centralized, FELLRec
from fellrec.models.adapters import CLIENT_MODULE_FILE, ClientAdapters, LoRASettings
from fellrec.models.item_components import ItemComponents, ItemSettings, log_popularity_bias
from fellrec.models.sequential import SequentialRecommender, next_item_targets
from fellrec.models.split import SplitModel, make_trunk
from fellrec.training.records.results import RESULTS_FILE

NUM_ITEMS = 12


def test_each_position_predicts_the_next_item() -> None:
    histories = torch.tensor([[-1, -1, 4, 5], [1, 2, 3, 4]])
    targets = torch.tensor([6, 9])
    expected = torch.tensor([[-1, -1, 5, 6], [2, 3, 4, 9]])
    assert torch.equal(next_item_targets(histories, targets), expected)


def _recommender(
    model: torch.nn.Module,
    split: bool,
    num_clients: int = 2,
    text: bool = True,
    negatives: int | None = None,
) -> SequentialRecommender:
    hidden = int(model.config.hidden_size)
    torch.manual_seed(0)
    modules = [ItemComponents(NUM_ITEMS, hidden, ItemSettings(), 0.05) for _ in range(num_clients)]
    adapters = ClientAdapters(model, LoRASettings(dropout=0.0), num_clients, client_modules=modules)
    table = F.normalize(torch.randn(NUM_ITEMS, hidden), dim=-1) if text else None
    return SequentialRecommender(
        adapters,
        table,
        lambda embed: make_trunk(adapters.model, split, 1, 1, embed=embed, causal=True),
        negatives,
    )


@pytest.fixture(scope="module")
def deterministic_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("bert-seq"), dropout=0.0, num_layers=3)


def test_only_the_active_clients_parameters_require_grad(deterministic_encoder: Path) -> None:
    """Adapter and item components of one slot at a time: DDP's reducer sees all of them used."""
    recommender = _recommender(AutoModel.from_pretrained(deterministic_encoder), split=False)
    adapters = recommender.client_adapters
    for active in (1, 0):
        adapters.activate(active)
        for slot in range(2):
            flags = {p.requires_grad for p in adapters.parameters(slot)}
            assert flags == {slot == active}


def test_loss_is_the_mean_cross_entropy_over_positions(deterministic_encoder: Path) -> None:
    recommender = _recommender(AutoModel.from_pretrained(deterministic_encoder), split=False)
    histories = torch.tensor([[-1, 3, 4], [0, 1, 2]])
    targets = torch.tensor([5, 7])
    losses = recommender.losses(histories, targets)
    states = recommender.states(histories)
    logits = recommender.active_items.logits(
        states.reshape(-1, states.shape[-1]), recommender.item_vectors()
    ).reshape(2, 3, NUM_ITEMS)
    by_hand = torch.stack(
        [
            F.cross_entropy(logits[0, 1:], torch.tensor([4, 5])),
            F.cross_entropy(logits[1], torch.tensor([1, 2, 7])),
        ]
    )
    torch.testing.assert_close(losses, by_hand)
    # Scoring reads the state after the last (most recent) item.
    torch.testing.assert_close(recommender.scores(histories), logits[:, -1])


def test_causal_states_ignore_later_items(deterministic_encoder: Path) -> None:
    recommender = _recommender(AutoModel.from_pretrained(deterministic_encoder), split=True)
    first = recommender.states(torch.tensor([[1, 2, 3, 4]]))
    second = recommender.states(torch.tensor([[1, 2, 9, 10]]))
    torch.testing.assert_close(first[:, :2], second[:, :2])
    assert not torch.allclose(first[:, 2:], second[:, 2:])


def test_causal_encoder_equals_huggingface_decoder_mode() -> None:
    """Our causal run of an encoder is BERT's own ``is_decoder`` attention."""
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    encoder = BertModel(config).eval()
    decoder = BertModel(BertConfig(**{**config.to_dict(), "is_decoder": True})).eval()
    decoder.load_state_dict(encoder.state_dict())
    vectors = torch.randn(2, 5, 16)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    reference = decoder(inputs_embeds=vectors, attention_mask=mask).last_hidden_state

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return vectors

    ids = torch.zeros(2, 5, dtype=torch.long)
    for split in (False, True):
        ours = make_trunk(encoder, split, 1, 1, embed=embed, causal=True)(ids, mask)
        real = mask.bool()
        torch.testing.assert_close(ours[real], reference[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("negatives", [None, 4])
def test_split_training_equals_unsplit(deterministic_encoder: Path, negatives: int | None) -> None:
    histories = torch.tensor([[-1, 3, 4, 8], [0, 1, 2, 6], [-1, -1, 5, 9]])
    targets = torch.tensor([5, 7, 11])
    results = []
    for split in (False, True):
        recommender = _recommender(
            AutoModel.from_pretrained(deterministic_encoder), split, negatives=negatives
        )
        if split:
            assert isinstance(recommender.__dict__["trunk"], SplitModel)
        generator = torch.Generator().manual_seed(0)
        loss = recommender.losses(histories, targets, generator).sum()
        loss.backward()
        grads = {
            name: param.grad.clone()
            for name, param in recommender.named_parameters()
            if param.grad is not None
        }
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    # Adapters of every block and the active client's ID embeddings, biases and temperature.
    assert any("lora_" in name for name in grads_a)
    assert {"items.0.id_embedding", "items.0.bias", "items.0.log_scale"} <= set(grads_a)
    assert not any(name.startswith("items.1.") for name in grads_a)  # the other client's
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-6, rtol=0, msg=name)


def test_item_components_are_exchanged_like_the_adapter(deterministic_encoder: Path) -> None:
    recommender = _recommender(AutoModel.from_pretrained(deterministic_encoder), split=False)
    adapters = recommender.client_adapters
    items = sum(p.numel() for p in recommender.items[0].parameters())
    assert adapters.num_module_parameters == items
    assert adapters.num_parameters > items  # the LoRA parameters come first
    assert adapters.keys[-3:] == ["items.id_embedding", "items.bias", "items.log_scale"]
    theta = adapters.get_matrix()
    assert torch.equal(theta[0], theta[1])  # identical initialisation, broadcast from slot 0
    changed = theta.clone()
    biases = slice(-NUM_ITEMS - 1, -1)  # before the temperature, the last value
    changed[1, biases] += 1.0
    adapters.set_matrix(changed)
    torch.testing.assert_close(recommender.items[1].bias.detach(), theta[1, biases] + 1)
    torch.testing.assert_close(recommender.items[0].bias.detach(), theta[0, biases])


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(deterministic_encoder: Path) -> None:
    recommender = _recommender(AutoModel.from_pretrained(deterministic_encoder), split=True)
    histories = torch.tensor([[-1, 3, 4, 8], [0, 1, 2, 6], [-1, -1, 5, 9]])
    targets = torch.tensor([5, 7, 11])
    adapters = recommender.client_adapters
    optimizer = torch.optim.AdamW(adapters.parameters(0), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = recommender.losses(histories, targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def _sequential_run(tmp_path, tiny_encoder_dir, strategy, rounds, items=None, callbacks=()):
    """A tiny federated run of the sequential recommender (windows of stride 4)."""
    model_options: dict = {"recommender": "sequential"}
    if items is not None:
        model_options["items"] = items
    return tiny_run(
        tmp_path,
        tiny_encoder_dir,
        strategy,
        rounds=rounds,
        extra_callbacks=list(callbacks),
        data_options={"window_stride": 4},
        model_options=model_options,
    )


def test_federated_run_trains_scores_and_exports_item_components(tmp_path, tiny_encoder_dir):
    trainer, model, data, loop = _sequential_run(tmp_path, tiny_encoder_dir, FELLRec(), rounds=2)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    losses = [record["train_loss"] for record in results["history"]]
    assert all(all(loss is not None for loss in row) for row in losses)
    assert results["overall"]["users"] > 0
    # Each client's selected item components are exported beside its peft adapter.
    from safetensors.torch import load_file

    for client in range(3):
        saved = load_file(str(tmp_path / "adapters" / f"client_{client}" / CLIENT_MODULE_FILE))
        assert set(saved) == {"bias", "id_embedding", "log_scale"}
        assert torch.equal(saved["bias"], model.recommender.items[client].bias.detach())
    # The resources count the item components among the client's trainable parameters.
    resources = results["resources"]
    assert resources["client_module_parameters"] == model.adapters.num_module_parameters > 0
    # The end-of-run privacy probe attacks item tokens, with the linear map and the front copy.
    assert results["privacy"]["inputs"] == "items"
    assert results["privacy"]["front_copy"]["parameters"] == "exact"
    assert results["privacy"]["front_copy"]["curve"][0]["token_recovery"] == 1.0
    # Every round's exchanged item components and example counts were scored.
    parameters = results["privacy"]["parameters"]
    assert [r["round"] for r in parameters["rounds"]] == [0, 1]
    assert [c["client"] for c in parameters["initial"]] == [0, 1, 2]
    assert set(parameters["rounds"][0]["clients"][0]["signals"]) == {
        "bias",
        "bias_update",
        "id_update",
    }
    reports = results["privacy"]["reports"]["rounds"]
    assert all(c["windows_exact"] for r in reports for c in r["clients"])
    # Checkpoints hold the item components, so a resumed run gets them back.
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(key.startswith("recommender.items.0.") for key in state)
    assert not any("word_embeddings" in key for key in state)  # the frozen base is not saved


@pytest.mark.parametrize("pooled", [False, True])
def test_biases_start_from_the_popularity_of_the_data_each_slot_trains_on(
    tmp_path, tiny_encoder_dir, pooled: bool
) -> None:
    from fellrec.metrics.popularity import popularity_scores

    strategy = Centralized() if pooled else FELLRec()
    starts: list[torch.Tensor] = []

    class RecordStart(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            starts.extend(items.bias.detach().clone() for items in pl_module.recommender.items)

    trainer, model, data, _ = _sequential_run(
        tmp_path,
        tiny_encoder_dir,
        strategy,
        rounds=1,
        items=ItemSettings(bias_init="log_popularity"),
        callbacks=[RecordStart()],
    )
    trainer.fit(model, datamodule=data)
    sequences = data.data.split.train_sequences
    num_items = data.data.dataset.num_items
    assert len(starts) == 3
    for client in range(3):
        users = range(len(sequences)) if pooled else (data.data.assignment == client).nonzero()[0]
        counts = popularity_scores([sequences[u] for u in users], num_items)
        assert counts.sum() > 0
        torch.testing.assert_close(starts[client], log_popularity_bias(counts))
    if not pooled:  # each client starts from its own data's ranking
        assert not torch.equal(starts[0], starts[1])


def test_item_weight_decay_reaches_only_the_id_rows_in_a_real_fit(tmp_path, tiny_encoder_dir):
    trainer, model, data, _ = _sequential_run(
        tmp_path, tiny_encoder_dir, FELLRec(), rounds=1, items=ItemSettings(weight_decay=0.5)
    )
    trainer.fit(model, datamodule=data)
    for slot, optimizer in enumerate(model.client_optimizers()):
        items = model.recommender.items[slot]
        decays = {
            id(p): group["weight_decay"]
            for group in optimizer.param_groups
            for p in group["params"]
        }
        assert decays[id(items.id_embedding)] == 0.5
        assert decays[id(items.bias)] == decays[id(items.log_scale)] == model.weight_decay == 0.0
        assert len(decays) == len(model.adapters.parameters(slot))  # every parameter, once
