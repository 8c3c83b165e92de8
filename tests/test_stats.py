from __future__ import annotations

import math

import numpy as np
import pytest

from fellrec.data.examples import sliding_window_examples
from fellrec.data.schema import EvalUsers, Split
from fellrec.data.stats import (
    COUNT_COLUMNS,
    format_partition_table,
    js_divergence,
    partition_statistics,
)


def _eval(users: list[int]) -> EvalUsers:
    one = [np.array([0])] * len(users)
    return EvalUsers(
        users=np.array(users, dtype=np.int64), histories=one, targets=one, consumed=one
    )


# Items 0, 1 are category A, items 2, 3 category B. Client 0 (users 0, 1) reads only A,
# client 1 (users 2, 3) only B, in equal amounts: global distribution is 50/50.
SEQUENCES = [np.array([0, 1, 0]), np.array([1]), np.array([2, 3]), np.array([3, 2])]
CATEGORIES = [("A",), ("A", "x"), ("B",), ("B",)]


@pytest.fixture
def stats() -> dict:
    split = Split("temporal", SEQUENCES, valid=_eval([0, 2, 3]), test=_eval([1]))
    examples = sliding_window_examples(SEQUENCES, history_length=2)
    return partition_statistics(np.array([0, 0, 1, 1]), split, examples, CATEGORIES, 2)


def test_counts_per_client(stats: dict) -> None:
    assert stats["clients"][0] | {"js_divergence": None} == {
        "client": 0, "users": 2, "train_examples": 2, "train_interactions": 4,
        "valid_users": 1, "test_users": 1, "js_divergence": None,
    }  # fmt: skip
    row = stats["clients"][1]
    assert (row["users"], row["train_examples"], row["train_interactions"]) == (2, 2, 4)
    assert (row["valid_users"], row["test_users"]) == (2, 0)


def test_heterogeneity(stats: dict) -> None:
    assert stats["categories"] == ["A", "B"]
    assert stats["global_distribution"] == [0.5, 0.5]
    assert stats["client_distributions"] == [[1.0, 0.0], [0.0, 1.0]]
    # JS([1, 0], [.5, .5]) with m = [.75, .25]: (log2(4/3) + (.5 log2(2/3) + .5 log2 2)) / 2
    expected = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert stats["clients"][0]["js_divergence"] == pytest.approx(expected)
    assert stats["mean_js_divergence"] == pytest.approx(expected)


def test_js_divergence_bounds() -> None:
    assert js_divergence(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == pytest.approx(0.0)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_client_without_train_interactions() -> None:
    seqs = [np.array([0, 1]), np.array([], dtype=np.int64)]
    split = Split("temporal", seqs, valid=_eval([0]), test=_eval([0]))
    out = partition_statistics(
        np.array([0, 1]), split, sliding_window_examples(seqs, 2), CATEGORIES, 2
    )
    assert out["clients"][1]["js_divergence"] is None
    assert out["client_distributions"][1] == [0.0, 0.0]
    assert out["mean_js_divergence"] == pytest.approx(0.0)


def test_format_table(stats: dict) -> None:
    table = format_partition_table(stats)
    lines = table.splitlines()
    assert lines[0].split() == [*COUNT_COLUMNS, "js_div"]
    assert lines[2].split() == ["0", "2", "2", "4", "1", "1", f"{stats['mean_js_divergence']:.4f}"]
    assert "total" in table and lines[-2].split()[:6] == ["total", "4", "4", "8", "3", "1"]
    assert lines[-1].endswith(f"{stats['mean_js_divergence']:.4f}")
