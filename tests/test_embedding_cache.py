"""The item-text embedding cache: keys that tell models and catalogs apart, one compute, atomic."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from fellrec.models.embedding_cache import cache_path, load_or_compute, model_fingerprint


def _tiny_bert(seed: int) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    return BertModel(config)


def test_a_key_names_one_file_per_kind():
    first = cache_path(Path("/cache"), "item-text", [1, "a"])  # a name only: nothing is written
    assert first.parent == Path("/cache")
    assert first.name.startswith("item-text-") and first.suffix == ".pt"
    assert len(first.stem) == len("item-text-") + 24
    same = cache_path(first.parent, "item-text", [1, "a"])
    assert same == first
    assert cache_path(first.parent, "item-text", [1, "b"]) != first
    assert cache_path(first.parent, "grounding", [1, "a"]) != first


def test_a_table_is_computed_once_then_read_back(tmp_path):
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).view(2, 3)

    path = tmp_path / "deep" / "item-text-x.pt"
    first = load_or_compute(path, compute, torch.device("cpu"))
    again = load_or_compute(path, compute, torch.device("cpu"))
    assert len(calls) == 1 and torch.equal(first, again)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left over
    assert not again.is_inference()


def test_without_a_path_every_call_computes(tmp_path):
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.ones(2)

    load_or_compute(None, compute, torch.device("cpu"))
    load_or_compute(None, compute, torch.device("cpu"))
    assert len(calls) == 2 and not any(tmp_path.iterdir())


def test_the_fingerprint_tells_weights_dtypes_and_autocast_apart():
    model = _tiny_bert(0)
    assert model_fingerprint(model) == model_fingerprint(_tiny_bert(0))
    assert model_fingerprint(model) != model_fingerprint(_tiny_bert(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model_fingerprint(model)
    assert under_autocast != model_fingerprint(model)
    assert under_autocast[-1] == str(torch.bfloat16)
    assert model_fingerprint(model.to(torch.float64))[2] == str(torch.float64)
