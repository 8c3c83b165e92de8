import pytest
import torch
from transformers import AutoTokenizer

from fellrec.models.text import HistoryRenderer, format_item_text


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


def test_format_item_text_fields_and_errors():
    assert format_item_text("{title} ({categories})", "Dune", ["Sci-Fi", "Classic"]) == (
        "Dune (Sci-Fi, Classic)"
    )
    with pytest.raises(ValueError, match=r"model\.item_text"):
        format_item_text("{name}", "Dune", [])


def test_history_is_most_recent_first_with_separators(tokenizer):
    renderer = HistoryRenderer(tokenizer, ["red apple", "blue sky", "green tea"], 8, 64)
    ids, mask = renderer.render_histories(torch.tensor([[-1, 0, 2], [-1, -1, 1]]))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    green_tea = tokenizer("green tea", add_special_tokens=False)["input_ids"]
    red_apple = tokenizer("red apple", add_special_tokens=False)["input_ids"]
    assert ids[0, : mask[0].sum()].tolist() == [cls, *green_tea, sep, *red_apple, sep]
    assert mask[1].sum() < mask[0].sum()  # shorter history, right padding
    assert ids[1, mask[1].sum() :].eq(tokenizer.pad_token_id).all()


def test_truncation_keeps_the_most_recent_items(tokenizer):
    renderer = HistoryRenderer(tokenizer, ["one two three four"] * 10, 8, 12)
    ids, mask = renderer.render_histories(torch.arange(10).unsqueeze(0))
    assert ids.shape[1] <= 12 and mask.sum() == ids.shape[1]
    assert ids[0, 0] == tokenizer.cls_token_id


def test_items_are_tokenized_once_and_rendered_with_special_tokens(tokenizer):
    renderer = HistoryRenderer(tokenizer, ["red apple", "blue sky"], 8, 64)
    ids, _ = renderer.render_items([1])
    sky = tokenizer("blue sky", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == [tokenizer.cls_token_id, *sky, tokenizer.sep_token_id]
    assert renderer.num_items == 2
