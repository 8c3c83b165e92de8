import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fellrec.models.generative import GenerativeRecommender
from fellrec.models.popularity_grounding import standardized_log_popularity, with_popularity
from fellrec.models.prompts import PromptSettings, render_prompt, user_message

# Distinct titles: every one must be its own nearest neighbour after grounding.
TITLES = [
    "red apple pie",
    "blue sky",
    "green tea",
    "a much longer item title here",
    "toy story",
    "heat",
]


def load(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tokenizer


def make(tiny_llama_dir, **settings):
    model, tokenizer = load(tiny_llama_dir)
    options = {"num_beams": 2, "max_new_tokens": 6, **settings}
    return GenerativeRecommender(model, tokenizer, TITLES, PromptSettings(**options))


# A minimal ChatML-style template (SmolLM2's layout, without its default system turn).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_chat(tiny_llama_dir, **settings):
    model, tokenizer = load(tiny_llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = CHAT_TEMPLATE
    options = {"num_beams": 2, "max_new_tokens": 6, "template": "chat", **settings}
    return GenerativeRecommender(model, tokenizer, TITLES, PromptSettings(**options))


def decoder_calls(recommender):
    """Count forward passes of the decoder stack (LlamaModel)."""
    calls = []
    decoder = recommender.base_model().model
    handle = decoder.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def expected_loss(recommender, history, target, response_only):
    """The loss by hand from the model's own full logits."""
    prompt = recommender.prompt_ids(history, 10_000)
    response = recommender.response_ids(target)
    ids = torch.tensor([[*prompt, *response]])
    with torch.no_grad():
        logits = recommender.model(input_ids=ids).logits[0, :-1]
    labels = ids[0, 1:]
    tokens = F.cross_entropy(logits, labels, reduction="none")
    if response_only:
        tokens = tokens[len(prompt) - 1 :]  # logits at the last prompt token predict the response
        assert len(tokens) == len(response)
    return tokens.mean()


def test_response_is_the_quoted_title_and_eos(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    tokens = recommender.tokenizer.convert_ids_to_tokens(recommender.response_ids(2))
    assert tokens == ['"', "green", "tea", '"', "[SEP]"]
    prompt = recommender.tokenizer.convert_ids_to_tokens(recommender.prompt_ids([0, 1], 10_000))
    assert prompt[0] == "[CLS]"  # the tokenizer's bos, but never its trailing [SEP]
    assert prompt[-3:] == ["#", "response", ":"]
    assert "[SEP]" not in prompt


@pytest.mark.parametrize("response_only", [True, False])
def test_loss_matches_hand_computation(tiny_llama_dir, response_only):
    recommender = make(tiny_llama_dir, response_only_loss=response_only)
    recommender.eval()
    with torch.no_grad():
        got = recommender.losses(torch.tensor([[-1, 0, 1]]), torch.tensor([3]))
    assert got.shape == (1,)
    assert torch.allclose(got[0], expected_loss(recommender, [0, 1], 3, response_only), atol=1e-5)


def test_chat_template_puts_the_history_in_a_user_turn(tiny_llama_dir):
    recommender = make_chat(tiny_llama_dir)
    tokenizer = recommender.tokenizer
    ids = recommender.prompt_ids([0, 1], 10_000)
    text = "<|im_start|>user\n" + user_message(recommender.settings, TITLES[:2])
    text += "<|im_end|>\n<|im_start|>assistant\n"
    # The template's markers are parsed into their own ids, and no [CLS] prefix is added.
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.cls_token_id not in ids
    recommender.eval()
    with torch.no_grad():
        got = recommender.losses(torch.tensor([[-1, 0, 1]]), torch.tensor([3]))
    assert torch.allclose(got[0], expected_loss(recommender, [0, 1], 3, False), atol=1e-5)
    assert len(recommender.generate_titles(torch.tensor([[-1, 0, 1]]))) == 1


def test_chat_template_needs_one_and_says_which_switch(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=r"model\.prompt\.template: chat needs .*chat template"):
        GenerativeRecommender(model, tokenizer, TITLES, PromptSettings(template="chat"))


def test_response_only_differs_from_whole_sequence(tiny_llama_dir):
    whole = make(tiny_llama_dir).eval()
    response = make(tiny_llama_dir, response_only_loss=True).eval()
    histories, targets = torch.tensor([[0, 1, 2]]), torch.tensor([4])
    with torch.no_grad():
        assert not torch.allclose(
            whole.losses(histories, targets), response.losses(histories, targets)
        )


@pytest.mark.parametrize("response_only", [True, False])
def test_padding_does_not_change_an_examples_loss(tiny_llama_dir, response_only):
    recommender = make(tiny_llama_dir, response_only_loss=response_only).eval()
    histories = torch.tensor([[-1, -1, 5], [0, 1, 2], [-1, 4, 3]])
    targets = torch.tensor([3, 5, 0])
    with torch.no_grad():
        batch = recommender.losses(histories, targets)
        alone = torch.cat(
            [recommender.losses(histories[i : i + 1], targets[i : i + 1]) for i in range(3)]
        )
    assert torch.allclose(batch, alone, atol=1e-5)


def test_truncation_drops_oldest_items_and_keeps_the_response(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    settings = PromptSettings()
    cls = tokenizer.cls_token_id
    kept = [
        cls,
        *tokenizer(render_prompt(settings, TITLES[3:5]), add_special_tokens=False)["input_ids"],
    ]
    probe = GenerativeRecommender(model, tokenizer, TITLES, settings)
    response = probe.response_ids(5)
    # A cutoff that holds exactly the two most recent items plus the response.
    settings = PromptSettings(max_prompt_tokens=len(kept) + len(response))
    recommender = GenerativeRecommender(model, tokenizer, TITLES, settings).eval()
    history = [0, 1, 2, 3, 4]
    assert recommender.prompt_ids(history, settings.max_prompt_tokens - len(response)) == kept
    with torch.no_grad():
        truncated = recommender.losses(torch.tensor([history]), torch.tensor([5]))
        short = probe.losses(torch.tensor([[-1, -1, -1, 3, 4]]), torch.tensor([5]))
    assert torch.allclose(truncated, short, atol=1e-6)
    # The instruction itself is never cut, even when nothing else fits.
    bare = [cls, *tokenizer(render_prompt(settings, []), add_special_tokens=False)["input_ids"]]
    assert recommender.prompt_ids(history, 3) == bare


def test_prompts_are_tokenized_once(tiny_llama_dir, monkeypatch):
    recommender = make(tiny_llama_dir)
    histories, targets = torch.tensor([[-1, 0, 1], [2, 3, 4]]), torch.tensor([5, 0])
    with torch.no_grad():
        recommender.losses(histories, targets)
        calls = []
        original = recommender._encode
        monkeypatch.setattr(
            recommender, "_encode", lambda text: calls.append(text) or original(text)
        )
        recommender.losses(histories, targets)
    assert calls == []


def test_grounding_ranks_each_titles_own_item_first(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    scores = recommender.ground(TITLES)
    assert scores.shape == (len(TITLES), len(TITLES))
    assert torch.equal(scores.argmax(1), torch.arange(len(TITLES)))
    assert torch.all(scores.diagonal() > -1e-3)  # distance to itself ~ 0


def test_item_embeddings_batched_equal_one_by_one(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    recommender.item_batch_size = 4  # mixed lengths, left padding
    table = recommender.item_embeddings()
    assert table.shape == (len(TITLES), 32)
    for item, ids in enumerate(recommender.title_ids):
        single = recommender._embed([[recommender.tokenizer.cls_token_id, *ids]])[0]
        assert torch.allclose(table[item], single, atol=1e-5)


def test_mean_grounding_averages_the_title_states_without_the_prefix(tiny_llama_dir):
    recommender = make(tiny_llama_dir, grounding="mean")
    recommender.item_batch_size = 4  # mixed lengths, left padding
    table = recommender.item_embeddings()
    cls = recommender.tokenizer.cls_token_id
    for item, ids in enumerate(recommender.title_ids):
        with torch.no_grad():
            states = recommender._decode(torch.tensor([[cls, *ids]]), torch.ones(1, len(ids) + 1))
        assert torch.allclose(table[item], states[0, 1:].mean(0), atol=1e-5)
    # An empty title is its prefix alone: its one state is kept.
    with torch.no_grad():
        alone = recommender._decode(torch.tensor([[cls]]), torch.ones(1, 1))[0, 0]
    assert torch.allclose(recommender._embed([[cls]])[0], alone, atol=1e-5)
    scores = recommender.ground(TITLES)
    assert torch.equal(scores.argmax(1), torch.arange(len(TITLES)))


def test_each_grounding_has_its_own_table_and_cache_entry(tiny_llama_dir, tmp_path):
    model, tokenizer = load(tiny_llama_dir)
    settings = PromptSettings()
    recommender = GenerativeRecommender(
        model, tokenizer, TITLES, settings, embedding_cache=tmp_path
    )
    last = recommender.item_embeddings()
    settings.grounding = "mean"
    mean = recommender.item_embeddings()
    assert not torch.allclose(last, mean)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    settings.grounding = "last_token"
    assert recommender.item_embeddings() is last
    # Queries follow the switch too: a title grounded by its mean state finds its own item.
    settings.grounding = "mean"
    assert recommender.ground(["green tea"]).argmax(1).tolist() == [2]


def test_consumed_items_are_never_recommended(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    histories = torch.tensor([[-1, 0, 1], [2, 3, 4]])
    exclude = torch.zeros(2, len(TITLES), dtype=torch.bool)
    for row, history in enumerate(histories.tolist()):
        exclude[row, [i for i in history if i >= 0]] = True
    # "Generating" a consumed title would rank it first without the mask.
    unmasked = recommender.ground([TITLES[1], TITLES[4]])
    assert unmasked.argmax(1).tolist() == [1, 4]
    masked = recommender.ground([TITLES[1], TITLES[4]], exclude=exclude)
    for scores in (masked, recommender.recommend(histories, exclude=exclude)):
        assert torch.isinf(scores[exclude]).all()
        top = scores.topk(3, dim=1).indices
        assert not exclude.gather(1, top).any()


def test_item_embeddings_are_computed_once(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    recommender.item_batch_size = 4
    calls, handle = decoder_calls(recommender)
    first = recommender.item_embeddings()
    assert len(calls) == math.ceil(len(TITLES) / 4)
    calls.clear()
    assert recommender.item_embeddings() is first
    recommender.ground(["green tea", "heat"])
    assert len(calls) == 1  # only the two queries
    handle.remove()


def test_disk_cache_is_reused(tiny_llama_dir, tmp_path):
    model, tokenizer = load(tiny_llama_dir)
    settings = PromptSettings()
    first = GenerativeRecommender(model, tokenizer, TITLES, settings, embedding_cache=tmp_path)
    table = first.item_embeddings()
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = GenerativeRecommender(model, tokenizer, TITLES, settings, embedding_cache=tmp_path)
    calls, handle = decoder_calls(second)
    assert torch.equal(second.item_embeddings(), table)
    assert calls == []
    third = GenerativeRecommender(model, tokenizer, TITLES[:4], settings, embedding_cache=tmp_path)
    assert third.item_embeddings().shape == (4, 32)
    assert calls == [1]  # other titles, other key: computed
    assert len(list(tmp_path.glob("*.pt"))) == 2
    handle.remove()


def test_grounding_uses_the_base_model_without_adapters(tiny_llama_dir):
    plain = make(tiny_llama_dir)
    model, tokenizer = load(tiny_llama_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    adapted = GenerativeRecommender(peft_model, tokenizer, TITLES, plain.settings)
    assert torch.allclose(adapted.item_embeddings(), plain.item_embeddings(), atol=1e-6)
    ids, mask = torch.tensor([[101, 2417, 102]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():  # the (random, non-zero) adapter does change the training states
        assert not torch.allclose(adapted.hidden_states(ids, mask), plain.hidden_states(ids, mask))


def test_beam_search_scores_and_lora_gradients(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    recommender = GenerativeRecommender(
        peft_model, tokenizer, TITLES, PromptSettings(num_beams=2, max_new_tokens=5)
    )
    histories = torch.tensor([[-1, 0, 1], [2, 3, 4], [-1, -1, 5], [0, 2, 4]])
    peft_model.train()
    scores = recommender.recommend(histories)
    assert scores.shape == (4, len(TITLES))
    assert torch.isfinite(scores).all()
    assert peft_model.training and peft_model.base_model.model.model.layers[0].training
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is untouched
    titles = recommender.generate_titles(histories)
    assert len(titles) == 4 and all(isinstance(title, str) for title in titles)
    recommender.losses(histories, torch.tensor([2, 5, 0, 1])).sum().backward()
    lora = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in name for name in lora)
    assert {"q_proj", "v_proj"} <= {name.split(".")[-4] for name in lora}
    assert all(p.grad is not None for p in lora.values())
    # lora_B starts at zero, so its gradient is the one that must be non-zero.
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)


def test_custom_trunk_runs_the_training_forward(tiny_llama_dir):
    reference = make(tiny_llama_dir).eval()
    calls = []

    def trunk(input_ids, attention_mask):
        calls.append(input_ids.shape)
        return reference.hidden_states(input_ids, attention_mask)

    model, tokenizer = load(tiny_llama_dir)
    split = GenerativeRecommender(model, tokenizer, TITLES, reference.settings, trunk=trunk)
    assert "_trunk" not in dict(split.named_children())
    histories, targets = torch.tensor([[-1, 0, 1], [2, 3, 4]]), torch.tensor([5, 0])
    with torch.no_grad():
        assert torch.allclose(
            split.losses(histories, targets), reference.losses(histories, targets)
        )
    assert len(calls) == 1


def test_tokenizer_without_pad_token_uses_eos(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    tokenizer.pad_token = None
    recommender = GenerativeRecommender(
        model, tokenizer, TITLES, PromptSettings(num_beams=1, max_new_tokens=3)
    )
    assert recommender.pad_id == tokenizer.eos_token_id
    assert recommender.recommend(torch.tensor([[-1, 0], [1, 2]])).shape == (2, len(TITLES))


def test_mode_is_restored_after_generation(tiny_llama_dir):
    recommender = make(tiny_llama_dir)
    recommender.model.eval()
    recommender.recommend(torch.tensor([[0, 1]]))
    assert not recommender.model.training
    recommender.model.train()
    recommender.model.model.layers[1].eval()  # a mixed state survives too
    recommender.recommend(torch.tensor([[0, 1]]))
    assert recommender.model.training and not recommender.model.model.layers[1].training
    assert recommender.model.model.layers[0].training


def test_invalid_arguments_fail(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    with pytest.raises(ValueError, match=r"model\.prompt\.num_beams"):
        GenerativeRecommender(model, tokenizer, TITLES, PromptSettings(num_beams=0))
    with pytest.raises(ValueError, match="at least one item"):
        GenerativeRecommender(model, tokenizer, [], PromptSettings())
    assert make(tiny_llama_dir).num_items == len(TITLES)
    assert make(tiny_llama_dir).device == torch.device("cpu")


def test_constrained_beams_are_catalog_items_ranked_first(tiny_llama_dir):
    # An untrained model writes anything; under the constraint every beam is a title.
    recommender = make(tiny_llama_dir, num_beams=3, max_new_tokens=2, constrained=True)
    histories = torch.tensor([[-1, 0, 1], [2, 3, 4]])
    ranked = recommender.generate_items(histories)
    assert [len(items) for items in ranked] == [3, 3]
    assert all(0 <= item < len(TITLES) for items in ranked for item in items)
    scores = recommender.recommend(histories)
    for row, items in enumerate(ranked):
        order = scores[row].argsort(descending=True).tolist()
        assert order[:3] == items  # beam order first (despite max_new_tokens 2 < longest)
        # The rest by distance to the best beam's title.
        table = recommender.item_embeddings()
        rest = [i for i in range(len(TITLES)) if i not in items]
        distances = torch.cdist(table[items[0]][None], table[rest])[0]
        assert order[3:] == [rest[i] for i in distances.argsort().tolist()]
    exclude = torch.zeros(2, len(TITLES), dtype=torch.bool)
    exclude[0, ranked[0][0]] = True
    masked = recommender.recommend(histories, exclude=exclude)
    assert torch.isinf(masked[0, ranked[0][0]]) and masked[0].argmax() == ranked[0][1]


def test_unconstrained_generation_is_unchanged_by_the_switch(tiny_llama_dir):
    free = make(tiny_llama_dir)
    histories = torch.tensor([[-1, 0, 1], [2, 3, 4]])
    texts = free.generate_titles(histories)
    # The untrained model writes no catalog title: the constraint is what makes beams items.
    assert not set(texts) & set(TITLES)
    assert make(tiny_llama_dir, constrained=True).generate_titles(histories) == texts


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "constrained"])
def test_popularity_term_rescores_the_grounding(tiny_llama_dir, constrained):
    histories = torch.tensor([[-1, 0, 1], [2, 3, 4]])
    exclude = torch.zeros(2, len(TITLES), dtype=torch.bool)
    exclude[1, 5] = True
    plain = make(tiny_llama_dir, constrained=constrained).recommend(histories, exclude)
    counts = torch.tensor([50, 0, 3, 0, 7, 900])
    popularity = standardized_log_popularity(counts)
    with_term = make(tiny_llama_dir, constrained=constrained, popularity_gamma=100.0)
    scores = with_term.recommend(histories, exclude, log_popularity=popularity)
    assert torch.equal(scores, with_popularity(plain, popularity, 100.0, constrained))
    order = scores.argsort(dim=1, descending=True).tolist()
    beams = 2 if constrained else 0  # constrained: the 2 beams' items first, in beam order
    # The most popular item leads what the grounding alone orders (unless a beam holds it).
    assert order[0][beams] == 5 or 5 in order[0][:beams]
    assert scores[1, 5] == float("-inf")  # excluded however popular
    # Without counts the setting has nothing to add: the grounding alone.
    assert torch.equal(with_term.recommend(histories, exclude), plain)
