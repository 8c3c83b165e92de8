"""The catalog trie that constrains beam search to titles, on hand-made token sequences."""

from __future__ import annotations

import pytest

from fellrec.models.catalog_trie import CatalogTrie

EOS, PAD = 9, 0
# Items 0 and 1 share a prefix; items 2 and 3 share a whole response (two items, one title).
RESPONSES = [[5, 6, EOS], [5, 7, 8, EOS], [4, EOS], [4, EOS]]


def test_the_trie_allows_exactly_the_continuations_of_some_title():
    trie = CatalogTrie(RESPONSES, EOS, PAD)
    assert sorted(trie.allowed([])) == [4, 5]
    assert sorted(trie.allowed([5])) == [6, 7]
    assert trie.allowed([5, 7]) == [8]
    assert trie.allowed([5, 7, 8]) == [EOS]
    assert trie.allowed([5, 6, EOS]) == [PAD]  # finished: padding only
    assert trie.allowed([5, 6, EOS, PAD]) == [PAD]
    assert trie.allowed([3]) == [EOS]  # off the catalog (never under the constraint): end it
    assert trie.longest == 4


def test_lookup_maps_a_finished_beam_to_its_items():
    trie = CatalogTrie(RESPONSES, EOS, PAD)
    assert trie.lookup([5, 7, 8, EOS, PAD, PAD]) == [1]
    assert trie.lookup([4, EOS]) == [2, 3]
    assert trie.lookup([5, 7]) == []  # unfinished
    assert trie.lookup([5, EOS]) == []  # finished off the catalog


def test_responses_must_end_with_eos_and_exist():
    with pytest.raises(ValueError, match="item 1's response does not end with eos"):
        CatalogTrie([[1, EOS], [2, 3]], EOS, PAD)
    with pytest.raises(ValueError, match="at least one response"):
        CatalogTrie([], EOS, PAD)
