"""Turning item indices into token ids: item texts are tokenized once, histories are concatenated.

A sequence-encoder recommender reads a user's history as text, most recent item first (as RecFormer
does, so truncation drops the oldest items). Every item text is tokenized exactly once when the
renderer is built; rendering a batch only concatenates cached token lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def format_item_text(template: str, title: str, categories: Sequence[str]) -> str:
    """Render one item's text from a template.

    Args:
        template: A ``str.format`` template with the fields ``{title}`` and ``{categories}``.
        title: The item title.
        categories: The item's categories (joined with ", ").

    Returns:
        The item text.

    Raises:
        ValueError: If the template names another field.
    """
    try:
        return template.format(title=title, categories=", ".join(categories))
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"model.item_text={template!r} uses an unknown field {error}; "
            "available: {title}, {categories}"
        ) from error


class HistoryRenderer:
    """Builds padded ``input_ids``/``attention_mask`` for histories and single items.

    Args:
        tokenizer: The backbone's tokenizer.
        item_texts: The text of every item index.
        max_item_tokens: Tokens kept per item text.
        max_length: Maximum sequence length including special tokens.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        item_texts: Sequence[str],
        max_item_tokens: int = 32,
        max_length: int = 128,
    ) -> None:
        if max_length < 3:
            raise ValueError(f"model.max_history_tokens must be at least 3, got {max_length}")
        start = tokenizer.cls_token_id
        start = start if start is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id
        sep = sep if sep is not None else tokenizer.eos_token_id
        if start is None or sep is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs cls/bos, sep/eos and pad tokens for an encoder")
        self.start_id = int(start)
        self.sep_id = int(sep)
        self.pad_id = int(tokenizer.pad_token_id)
        self.max_length = max_length
        encoded = tokenizer(
            list(item_texts),
            add_special_tokens=False,
            truncation=True,
            max_length=max_item_tokens,
        )["input_ids"]
        self.item_tokens: list[list[int]] = [list(ids) for ids in encoded]

    @property
    def num_items(self) -> int:
        """Number of items the renderer knows."""
        return len(self.item_tokens)

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        return input_ids, attention_mask

    def render_histories(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Render histories, most recent item first.

        Args:
            histories: Item indices ``(B, H)``, right-aligned, left-padded with ``-1``.

        Returns:
            ``input_ids`` and ``attention_mask``, both ``(B, T)`` with ``T <= max_length``.
        """
        budget = self.max_length - 1  # the start token
        sequences = []
        for row in histories.tolist():
            tokens = [self.start_id]
            for item in reversed(row):
                if item < 0:
                    break
                piece = [*self.item_tokens[item], self.sep_id]
                if len(tokens) + len(piece) > budget + 1:
                    piece = piece[: budget + 1 - len(tokens)]
                tokens.extend(piece)
                if len(tokens) >= budget + 1:
                    break
            sequences.append(tokens)
        return self._pad(sequences)

    def render_items(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Render single items as ``[start] text [sep]``.

        Args:
            items: Item indices.

        Returns:
            ``input_ids`` and ``attention_mask``, both ``(len(items), T)``.
        """
        limit = self.max_length - 2
        return self._pad(
            [[self.start_id, *self.item_tokens[i][:limit], self.sep_id] for i in items]
        )
