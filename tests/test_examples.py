from __future__ import annotations

import time

import numpy as np
import pytest

from fellrec.data.examples import sliding_window_examples

SEQUENCES = [np.array([5, 6, 7, 8]), np.array([1]), np.array([], dtype=np.int64), np.array([2, 3])]


def _naive(sequences: list[np.ndarray], h: int) -> tuple[list[int], list[list[int]], list[int]]:
    users, histories, targets = [], [], []
    for u, s in enumerate(sequences):
        for j in range(1, len(s)):
            window = [int(x) for x in s[max(0, j - h) : j]]
            users.append(u)
            histories.append([-1] * (h - len(window)) + window)
            targets.append(int(s[j]))
    return users, histories, targets


def test_exact_windows_h2() -> None:
    ex = sliding_window_examples(SEQUENCES, history_length=2)
    np.testing.assert_array_equal(ex.users, [0, 0, 0, 3])
    np.testing.assert_array_equal(ex.histories, [[-1, 5], [5, 6], [6, 7], [-1, 2]])
    np.testing.assert_array_equal(ex.targets, [6, 7, 8, 3])
    assert ex.histories.dtype == np.int64 and ex.users.dtype == np.int64
    assert len(ex) == 4


def test_exact_windows_h3() -> None:
    ex = sliding_window_examples(SEQUENCES, history_length=3)
    np.testing.assert_array_equal(ex.histories, [[-1, -1, 5], [-1, 5, 6], [5, 6, 7], [-1, -1, 2]])


def test_matches_naive_loop() -> None:
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, 50, size=n) for n in rng.integers(0, 25, size=40)]
    ex = sliding_window_examples(sequences, history_length=4)
    users, histories, targets = _naive(sequences, 4)
    np.testing.assert_array_equal(ex.users, users)
    np.testing.assert_array_equal(ex.histories, histories)
    np.testing.assert_array_equal(ex.targets, targets)


def test_subsampling_keeps_order_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    sequences = [rng.integers(0, 50, size=n) for n in rng.integers(2, 25, size=40)]
    full = sliding_window_examples(sequences, history_length=3)
    keys = {
        (int(u), int(t), tuple(h))
        for u, t, h in zip(full.users, full.targets, full.histories.tolist(), strict=True)
    }
    sub = sliding_window_examples(sequences, history_length=3, max_examples=50, seed=7)
    assert len(sub) == 50
    assert np.all(np.diff(sub.users) >= 0)
    assert all(
        (int(u), int(t), tuple(h)) in keys
        for u, t, h in zip(sub.users, sub.targets, sub.histories.tolist(), strict=True)
    )
    again = sliding_window_examples(sequences, history_length=3, max_examples=50, seed=7)
    np.testing.assert_array_equal(sub.histories, again.histories)
    other = sliding_window_examples(sequences, history_length=3, max_examples=50, seed=8)
    assert not np.array_equal(sub.targets, other.targets) or not np.array_equal(
        sub.histories, other.histories
    )


def test_max_examples_above_total_keeps_all() -> None:
    ex = sliding_window_examples(SEQUENCES, history_length=2, max_examples=100)
    assert len(ex) == 4


def test_no_examples() -> None:
    ex = sliding_window_examples([np.array([1]), np.array([], dtype=np.int64)], history_length=3)
    assert ex.histories.shape == (0, 3) and len(ex) == 0


@pytest.mark.parametrize(("h", "m"), [(0, None), (2, 0)])
def test_bad_arguments(h: int, m: int | None) -> None:
    with pytest.raises(ValueError):
        sliding_window_examples(SEQUENCES, history_length=h, max_examples=m)


def test_fast_on_100k_interactions() -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 3000, size=n) for n in rng.integers(5, 30, size=5800)]
    assert sum(len(s) for s in sequences) > 95_000
    start = time.perf_counter()
    ex = sliding_window_examples(sequences, history_length=10)
    assert time.perf_counter() - start < 1.0
    assert len(ex) == sum(len(s) for s in sequences) - len(sequences)


def test_stride_tiles_each_sequence_from_its_end() -> None:
    # Sequence 0 = [5, 6, 7, 8]: with H = stride = 2 the targets are 8 and 6 (counted from the
    # end), so the two windows [6, 7] -> 8 and [-1, 5] -> 6 cover every position once.
    ex = sliding_window_examples(SEQUENCES, history_length=2, stride=2)
    np.testing.assert_array_equal(ex.users, [0, 0, 3])
    np.testing.assert_array_equal(ex.histories, [[-1, 5], [6, 7], [-1, 2]])
    np.testing.assert_array_equal(ex.targets, [6, 8, 3])


def test_stride_equal_to_history_predicts_every_interaction_once() -> None:
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 50, size=n) for n in rng.integers(0, 30, size=25)]
    h = 4
    ex = sliding_window_examples(sequences, history_length=h, stride=h)
    counted = []
    for user, history, target in zip(ex.users, ex.histories, ex.targets, strict=True):
        positions = [*history[1:][history[:-1] >= 0], target]  # what each position predicts
        counted.append((int(user), len(positions)))
    per_user = np.bincount([u for u, _ in counted], weights=[n for _, n in counted], minlength=25)
    expected = [max(len(s) - 1, 0) for s in sequences]  # every item but the first is a target
    np.testing.assert_array_equal(per_user, expected)


def test_stride_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stride"):
        sliding_window_examples(SEQUENCES, history_length=2, stride=0)
