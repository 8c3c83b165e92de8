"""Generation through the split model: Hugging Face beam search driving front -> server -> back."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from fellrec.models.attention_masks import decoder_allowed
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.prompts import PromptSettings
from fellrec.models.split import SplitModel, make_trunk, new_kv_cache
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.transport import LocalTransport
from split_families import DECODER_FAMILIES, build_family, needs_transformers_5
from test_split_model import DECODERS_ON_EVERY_TRANSFORMERS, _batch, _llama, _other_family

ALLOWED = {
    ("to_server", "forward"): {"hidden_states", "attention_mask", "position_ids"},
    ("to_client", "forward"): {"hidden_states"},
}


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    llama = _llama(tiny_llama_dir)
    llama.eval()
    return llama


def test_decode_mask_covers_the_cached_keys():
    mask = torch.tensor([[0, 1, 1, 1]])
    last = decoder_allowed(mask, query_length=1)  # one new token after three cached positions
    assert last.shape == (1, 1, 1, 4)
    assert last[0, 0, 0].tolist() == [False, True, True, True]
    assert torch.equal(decoder_allowed(mask, query_length=4), decoder_allowed(mask))


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize(("k_front", "k_back"), [(0, 1), (1, 1), (2, 1), (1, 2)])
def test_split_generation_equals_unsplit_token_for_token(model, beams, k_front, k_back):
    input_ids, attention_mask = _batch("left", length=12)
    config = GenerationConfig(
        num_beams=beams, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=102
    )
    with torch.inference_mode():
        expected = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    transport = LocalTransport(record=True)
    split = make_trunk(model, True, k_front, k_back, transport)
    assert isinstance(split, SplitModel)
    with torch.inference_mode(), split.generating():
        got = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    assert torch.equal(got, expected)
    # Every decoding step crossed the transport, carrying only the new tokens' hidden states.
    steps = got.shape[1] - input_ids.shape[1]
    assert transport.calls == steps
    for payload in transport.payloads:
        assert set(payload.tensors) == ALLOWED[payload.direction, payload.phase]
    rows = input_ids.shape[0] * beams
    sent = [p.tensors["hidden_states"].shape for p in transport.payloads]
    assert sent[0] == (rows, input_ids.shape[1], 32)  # the prompt, once
    assert all(shape == (rows, 1, 32) for shape in sent[2:])  # then one token per step
    # The model's own forward is back in place afterwards.
    assert "forward" not in vars(split.inner)


def test_recommender_generates_through_the_split(model, tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    titles = ["Alpha Beta", "Gamma Delta", "Epsilon", "Zeta Eta Theta"]
    settings = PromptSettings(num_beams=2, max_new_tokens=5, max_prompt_tokens=64)
    histories = torch.tensor([[-1, 0, 1], [1, 2, 3]])
    unsplit = GenerativeRecommender(model, tokenizer, titles, settings)
    transport = LocalTransport()
    split = GenerativeRecommender(
        model, tokenizer, titles, settings, trunk=make_trunk(model, True, 1, 1, transport)
    )
    assert split.generate_titles(histories) == unsplit.generate_titles(histories)
    assert transport.calls > 0
    # Constrained to the catalog, the split writes the same items in the same beam order.
    constrained = PromptSettings(
        num_beams=2, max_new_tokens=5, max_prompt_tokens=64, constrained=True
    )
    unsplit = GenerativeRecommender(model, tokenizer, titles, constrained)
    split = GenerativeRecommender(
        model, tokenizer, titles, constrained, trunk=make_trunk(model, True, 1, 1, transport)
    )
    assert split.generate_items(histories) == unsplit.generate_items(histories)


@needs_transformers_5
@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_every_decoder_family_generates_through_the_split_token_for_token(family, beams):
    model = build_family(family)
    model.eval()
    input_ids, attention_mask = _batch("left", length=12)
    config = GenerationConfig(
        num_beams=beams, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    with torch.inference_mode():
        expected = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    for k_front, k_back in [(1, 1), (0, 2)]:
        transport = LocalTransport()
        split = make_trunk(model, True, k_front, k_back, transport)
        assert isinstance(split, SplitModel)
        with torch.inference_mode(), split.generating():
            got = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
        assert torch.equal(got, expected), (k_front, k_back)
        assert transport.calls == got.shape[1] - input_ids.shape[1]


@needs_transformers_5
def test_a_cache_the_split_does_not_rebuild_is_refused(model):
    input_ids, attention_mask = _batch("left", length=12)
    config = GenerationConfig(
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=102,
        cache_implementation="static",
    )
    split = make_trunk(model, True, 1, 1, LocalTransport())
    with (
        pytest.raises(ValueError, match=r"StaticCache.*split_execution: false"),
        torch.inference_mode(),
        split.generating(),
    ):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)


def assert_front_steps_equal_the_front(model: torch.nn.Module, padding: str) -> None:
    """Token by token on a KV cache, the front gives every real token the state it gives whole."""
    ids, mask = _batch(padding, length=12)
    for k_front in (1, 3):
        front = SplitModel(model, plan_split(num_blocks(model), k_front, 0), LocalTransport())
        cache = new_kv_cache(front.inner.config)
        with torch.inference_mode():
            whole = front.front(ids, mask)[0]
            steps = [
                front.front_step(ids[:, t : t + 1], mask[:, : t + 1], cache, torch.tensor([t]))[0]
                for t in range(ids.shape[1])
            ]
        stepped = torch.cat(steps, dim=1)
        real = mask.bool()
        assert torch.allclose(stepped[real], whole[real], atol=1e-5), (padding, k_front)


@needs_transformers_5
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_the_front_step_on_a_cache_equals_the_whole_front(family, padding):
    assert_front_steps_equal_the_front(build_family(family).eval(), padding)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", DECODERS_ON_EVERY_TRANSFORMERS)
def test_windowed_front_steps_equal_the_whole_front_on_every_transformers(name, padding):
    """Also on transformers 4.x (tox -e min): 4.56-4.57's sliding-window caches keep only the
    window's keys and report them by cache position, 4.53's keep every key."""
    model, _, _ = _other_family(name)
    assert_front_steps_equal_the_front(model.eval(), padding)
