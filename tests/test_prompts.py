import pytest

from fellrec.models.prompts import (
    PromptSettings,
    parse_response,
    render_prompt,
    render_response,
    user_message,
)

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)


def test_default_prompt_lists_quoted_history_oldest_first():
    prompt = render_prompt(PromptSettings(), ["Toy Story (1995)", "Heat (1995)"])
    assert prompt == (
        f"{PREAMBLE}\n\n### Instruction:\nGiven a list of movies the user has watched before, "
        "please recommend a new movie that the user likes to the user.\n\n"
        '### Input:\n"Toy Story (1995)", "Heat (1995)"\n\n### Response:\n'
    )


def test_custom_noun_verb_and_plural():
    books = render_prompt(PromptSettings(item_noun="book", verb="read"), ["Dune"])
    assert "Given a list of books the user has read before, please recommend a new book " in books
    games = PromptSettings(item_noun="video game", item_noun_plural="video games", verb="played")
    assert "a list of video games the user has played before" in render_prompt(games, [])
    series = PromptSettings(item_noun="series", item_noun_plural="series")
    assert "a list of series the user" in render_prompt(series, ["X"])
    assert "a new series that" in render_prompt(series, ["X"])


def test_empty_history_keeps_the_structure():
    assert render_prompt(PromptSettings(), []).endswith("### Input:\n\n\n### Response:\n")


def test_user_message_is_the_instruction_then_the_history():
    message = user_message(PromptSettings(item_noun="book", verb="read"), ["Dune", "Emma"])
    assert message == (
        "Given a list of books the user has read before, please recommend a new book that the "
        'user likes to the user.\n\n"Dune", "Emma"'
    )


def test_render_response_quotes_the_title():
    assert render_response("Heat (1995)") == '"Heat (1995)"'


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ('"Toy Story (1995)"', "Toy Story (1995)"),
        ('"Heat (1995)"\n"Casino (1995)"', "Heat (1995)"),
        (' "Heat" and something else', "Heat"),
        ('\n\n  "Heat"  ', "Heat"),
        ("Heat (1995)", "Heat (1995)"),
        ('"Unclosed title', "Unclosed title"),
        ("first line\nsecond line", "first line"),
        ('""', ""),
        ("", ""),
        ("  \n ", ""),
    ],
)
def test_parse_response(text, title):
    assert parse_response(text) == title


def test_parse_inverts_render():
    assert parse_response(render_response("Se7en (1995)")) == "Se7en (1995)"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("item_noun", " "),
        ("verb", ""),
        ("item_noun_plural", ""),
        ("max_prompt_tokens", 8),
        ("max_new_tokens", 0),
        ("num_beams", 0),
        ("template", "vicuna"),
        ("grounding", "first_token"),
    ],
)
def test_validate_names_the_field(field, value):
    settings = PromptSettings(**{field: value})
    with pytest.raises(ValueError, match=rf"model\.prompt\.{field}\b"):
        settings.validate()


def test_defaults_are_valid():
    PromptSettings().validate()
