"""Prompts of a generative (BIGRec-style) recommender: pure text, no tokenizer.

A prompt lists the user's history as quoted titles, oldest first (as BIGRec lists them); the
response is the quoted title of the next item. ``parse_response`` turns generated text back into a
title before it is grounded onto the catalog. The Alpaca layout (BIGRec's) is rendered here; the
chat layout puts :func:`user_message` into the tokenizer's own chat template, which only the
recommender holds (:class:`~fellrec.models.generative.GenerativeRecommender`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: The largest ``model.prompt.popularity_gamma`` accepted.
MAX_POPULARITY_GAMMA = 1000.0

#: Prompt layouts (``model.prompt.template``).
TEMPLATES = ("alpaca", "chat")

#: How titles are embedded for grounding (``model.prompt.grounding``).
GROUNDINGS = ("last_token", "mean")

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)


@dataclass
class PromptSettings:
    """Wording, length limits and decoding settings of the generative recommender."""

    item_noun: str = "movie"
    """Singular noun of an item in the instruction ("... recommend a new movie ...")."""
    item_noun_plural: str | None = None
    """Plural noun; ``None`` means ``item_noun + "s"``."""
    verb: str = "watched"
    """Past participle of the interaction ("... the user has watched before ...")."""
    response_only_loss: bool = False
    """Loss on the response tokens only (True) or on the whole sequence as the reference (False)."""
    max_prompt_tokens: int = 256
    """Cutoff of a training sequence (prompt + response + eos) and of an inference prompt; the
    oldest history items are dropped to fit (reference: 512)."""
    max_new_tokens: int = 32
    """Tokens generated per recommendation."""
    num_beams: int = 4
    """Beams of the beam search."""
    constrained: bool = False
    """Constrain beam search to the catalog: a prefix trie of every item's response tokens
    allows only tokens that continue some title, so every beam is an item, and the beams in
    score order rank the first ``num_beams`` items (the rest follow by their distance to the
    best beam's title). Generation may then run up to the longest title's tokens, beyond
    ``max_new_tokens``. False: free generation grounded by embedding distance (BIGRec)."""
    popularity_gamma: float = 0.0
    """Weight of BIGRec's popularity term, in [0, 1000]: each user's grounding scores,
    standardized over the items they can be recommended, plus gamma times the standardized
    log(1 + training count) of each item, counted in the client's own training data
    (``fellrec.models.popularity_grounding``). 0: grounding alone."""
    template: str = "alpaca"
    """Prompt layout. ``alpaca``: BIGRec's Alpaca-style prompt (preamble, ``### Instruction``,
    ``### Input``, ``### Response``; the reference). ``chat``: the same instruction and history as
    one user turn in the tokenizer's own chat template, the response as the assistant's turn (the
    layout instruction-tuned models such as SmolLM2-Instruct were tuned on; needs a tokenizer
    with a chat template)."""
    grounding: str = "last_token"
    """How a generated title and every catalog title are embedded (by the base model without
    adapters) before their L2 distance ranks the items. ``last_token``: the last layer's state at
    the title's last token (BIGRec). ``mean``: the mean of the last layer's states over the
    title's tokens (a title's last token is often the closing parenthesis of its year)."""

    @property
    def plural(self) -> str:
        """The plural item noun."""
        return self.item_noun_plural if self.item_noun_plural else self.item_noun + "s"

    def validate(self) -> None:
        """Check the settings.

        Raises:
            ValueError: Naming the offending ``model.prompt.<field>``.
        """
        for name in ("item_noun", "verb"):
            if not getattr(self, name).strip():
                raise ValueError(f"model.prompt.{name} must not be empty")
        if self.item_noun_plural is not None and not self.item_noun_plural.strip():
            raise ValueError("model.prompt.item_noun_plural must not be empty (or null)")
        # A cutoff below this cannot hold the fixed instruction of any tokenizer.
        if self.max_prompt_tokens < 16:
            raise ValueError(
                f"model.prompt.max_prompt_tokens must be >= 16, got {self.max_prompt_tokens}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"model.prompt.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"model.prompt.num_beams must be >= 1, got {self.num_beams}")
        for name, allowed in (("template", TEMPLATES), ("grounding", GROUNDINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.prompt.{name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        # Standardized parts are a few units: beyond ~10 the ranking is popularity's alone, and
        # the cap keeps every score exact enough in float32 to hold the beams' order.
        if not (0.0 <= self.popularity_gamma <= MAX_POPULARITY_GAMMA):
            raise ValueError(
                f"model.prompt.popularity_gamma must be in [0, {MAX_POPULARITY_GAMMA:g}], "
                f"got {self.popularity_gamma}"
            )


def instruction(settings: PromptSettings) -> str:
    """The task instruction, e.g. "Given a list of movies the user has watched before, ..."."""
    return (
        f"Given a list of {settings.plural} the user has {settings.verb} before, please "
        f"recommend a new {settings.item_noun} that the user likes to the user."
    )


def render_response(title: str) -> str:
    """The training response for a target title: the title in double quotes."""
    return f'"{title}"'


def listed_history(history_titles: Sequence[str]) -> str:
    """The history as quoted titles, comma-separated, oldest first."""
    return ", ".join(render_response(title) for title in history_titles)


def render_prompt(settings: PromptSettings, history_titles: Sequence[str]) -> str:
    """Render the Alpaca-style prompt for a history.

    Args:
        settings: Prompt wording.
        history_titles: Titles of the consumed items, oldest first.

    Returns:
        The prompt, ending with the ``### Response:`` line so the response follows directly.
    """
    return (
        f"{PREAMBLE}\n\n### Instruction:\n{instruction(settings)}\n\n"
        f"### Input:\n{listed_history(history_titles)}\n\n### Response:\n"
    )


def user_message(settings: PromptSettings, history_titles: Sequence[str]) -> str:
    """The user's turn of the chat layout: the instruction, a blank line, then the history.

    Args:
        settings: Prompt wording.
        history_titles: Titles of the consumed items, oldest first.
    """
    return f"{instruction(settings)}\n\n{listed_history(history_titles)}"


def parse_response(text: str) -> str:
    """Extract a title from generated text.

    Takes the first non-empty line, strips whitespace and an opening quote, and cuts at the next
    double quote (the closing one), so trailing chatter after the title is ignored.

    Args:
        text: Decoded generated tokens (without the prompt).

    Returns:
        The title, possibly empty when nothing usable was generated.
    """
    stripped = text.strip()
    line = stripped.splitlines()[0].strip() if stripped else ""
    line = line.lstrip('"').strip()
    return line.split('"', 1)[0].strip()
