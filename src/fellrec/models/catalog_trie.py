"""A prefix trie over the catalog's tokenized responses: beam search that can only write titles.

Generative retrieval constrains decoding to valid identifiers; for a BIGRec-style recommender
the identifiers are the responses it was trained to write (the quoted title and eos, tokenized
exactly as in training). At every decoding step the trie gives the tokens that continue some
catalog response from what was generated so far, so every finished beam is a catalog item, and
the beams in score order are a ranked list of items.
"""

from __future__ import annotations

from collections.abc import Sequence


class CatalogTrie:
    """The token sequences of every item's response, shared prefixes merged.

    Args:
        responses: Each item's response token ids (ending in eos), in item order.
        eos_id: The end-of-sequence token (every response ends with it).
        pad_id: What a finished beam may continue with (generation pads finished rows).

    Raises:
        ValueError: For an empty catalog or a response that does not end with ``eos_id``.
    """

    def __init__(self, responses: Sequence[Sequence[int]], eos_id: int, pad_id: int) -> None:
        if not responses:
            raise ValueError("the catalog trie needs at least one response")
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._root: dict[int, dict] = {}
        #: Item indices by complete response (two items with the same title share one).
        self.items: dict[tuple[int, ...], list[int]] = {}
        for item, response in enumerate(responses):
            if not response or response[-1] != eos_id:
                raise ValueError(f"item {item}'s response does not end with eos ({eos_id})")
            node = self._root
            for token in response:
                node = node.setdefault(int(token), {})
            self.items.setdefault(tuple(int(t) for t in response), []).append(item)
        #: Tokens of the longest response: the generation budget constrained decoding needs.
        self.longest = max(len(r) for r in responses)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """The tokens that may follow ``generated`` (the tokens written after the prompt).

        After eos only padding may follow. A prefix outside the trie (impossible under the
        constraint) may only end.
        """
        if self.eos_id in generated:
            return [self.pad_id]
        node = self._root
        for token in generated:
            child = node.get(int(token))
            if child is None:
                return [self.eos_id]
            node = child
        return list(node) if node else [self.eos_id]

    def lookup(self, generated: Sequence[int]) -> list[int]:
        """The items whose response is ``generated`` (cut after its first eos); [] if none."""
        tokens = [int(t) for t in generated]
        if self.eos_id not in tokens:
            return []
        return self.items.get(tuple(tokens[: tokens.index(self.eos_id) + 1]), [])
