"""Train / validation / test splits: temporal (cut by time) and per-user leave-one-out.

Both take an optional set of *new items* (``data.new_items``, chosen by :func:`choose_new_items`)
held out of training entirely. The split itself is made first, exactly as without them (no
interaction moves between periods); then every interaction with a new item is dropped from what
a model reads: the training sequences (so from every training window, as input and as target, and
from the popularity counts, the partition and the baselines' training) and the evaluated users'
histories (each history is the last ``H`` of the user's *other* earlier items). What stays:
validation and test targets that are new items (the only place a new item appears), the targets
of every other item, and the consumed-item masks (an item a user interacted with is still not
recommended back to them). A user whose earlier items are all new items has no history left and
is not evaluated in that period.
"""

from __future__ import annotations

import numpy as np

from fellrec.data.schema import EvalUsers, IndexedDataset, Split

#: Split methods accepted by :func:`split_dataset`.
SPLIT_METHODS = ("temporal", "leave_one_out")


#: Mixed into ``data.seed`` for the draw of the new items (a stream of its own).
NEW_ITEMS_STREAM = 0x6E6577


def choose_new_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    """The items held out of training under ``data.new_items``: a seeded uniform draw.

    Args:
        num_items: I: the catalog's items (every one can be drawn).
        fraction: Share of the items to hold out, in ``[0, 1)``.
        seed: ``data.seed``; the draw uses its own stream of it, so it does not change the
            partition or the batch order.

    Returns:
        ``round(fraction * I)`` item indices, sorted (empty for 0).

    Raises:
        ValueError: For a fraction outside ``[0, 1)`` or one that holds out no item.
    """
    if not (isinstance(fraction, int | float) and 0.0 <= fraction < 1.0):
        raise ValueError(
            f"data.new_items must be a fraction of the items in [0, 1), got {fraction}"
        )
    count = round(fraction * num_items)
    if fraction > 0 and count == 0:
        raise ValueError(
            f"data.new_items={fraction} holds out no item of the {num_items} in the catalog; "
            f"use at least {1 / num_items:.3g}, or 0 for none"
        )
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    generator = np.random.default_rng([int(seed), NEW_ITEMS_STREAM])
    return np.sort(generator.choice(num_items, size=count, replace=False)).astype(np.int64)


def split_dataset(
    data: IndexedDataset,
    method: str,
    history_length: int,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    cutoffs: tuple[int, int] | None = None,
    allow_empty: bool = False,
    new_items: np.ndarray | None = None,
) -> Split:
    """Split ``data`` with the named method.

    Args:
        data: The dataset to split.
        method: ``"temporal"`` or ``"leave_one_out"``.
        history_length: Maximum number of history items ``H`` kept per evaluated user.
        valid_fraction: Share of interactions in the validation period (temporal only, when
            ``cutoffs`` is not given).
        test_fraction: Share of interactions in the test period (same).
        cutoffs: Temporal only: ``(valid_start, test_start)`` timestamps; ``None`` derives them
            from the fractions (:func:`temporal_cutoffs`).
        allow_empty: Return an empty period instead of raising when no user is evaluable in it
            (one silo of a federation may have none).
        new_items: Items held out of training (module docstring); None or empty: none.

    Returns:
        The split.

    Raises:
        ValueError: If ``method`` is unknown, or as raised by the chosen split.
    """
    if method == "temporal":
        return temporal_split(
            data, history_length, valid_fraction, test_fraction, cutoffs, allow_empty, new_items
        )
    if method == "leave_one_out":
        return leave_one_out_split(data, history_length, allow_empty, new_items)
    raise ValueError(f"unknown split method {method!r}; split must be one of {SPLIT_METHODS}")


def temporal_cutoffs(
    timestamps: np.ndarray, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[int, int]:
    """The ``(valid_start, test_start)`` times at the positional cut points of a timeline.

    The last ``test_fraction`` of the (chronologically sorted) interactions would form the test
    period and the ``valid_fraction`` before them the validation period; the cut-offs are the
    timestamps of the first interaction of each period. Applied as time cuts, interactions that
    share a boundary's timestamp all go to the later period.

    Args:
        timestamps: Timestamps of all interactions, sorted ascending.
        valid_fraction: Share of interactions in the validation period, in ``(0, 1)``.
        test_fraction: Share of interactions in the test period, in ``(0, 1)``.

    Returns:
        ``(valid_start, test_start)``; a cut at the very end is one past the last timestamp.

    Raises:
        ValueError: If the fractions are out of range or there is no interaction.
    """
    if not (valid_fraction > 0 and test_fraction > 0 and valid_fraction + test_fraction < 1):
        raise ValueError(
            "temporal split needs valid_fraction > 0, test_fraction > 0 and their sum < 1, got "
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}"
        )
    n = len(timestamps)
    if n == 0:
        raise ValueError("temporal split of an empty dataset")
    test_start = n - round(n * test_fraction)
    valid_start = test_start - round(n * valid_fraction)
    end = int(timestamps[-1]) + 1

    def at(position: int) -> int:
        return int(timestamps[position]) if position < n else end

    return at(valid_start), at(test_start)


def temporal_split(
    data: IndexedDataset,
    history_length: int,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    cutoffs: tuple[int, int] | None = None,
    allow_empty: bool = False,
    new_items: np.ndarray | None = None,
) -> Split:
    """Split by time: train, then a validation period, then a test period.

    An interaction at time ``t`` is in training when ``t < valid_start``, in validation when
    ``valid_start <= t < test_start`` and in test when ``t >= test_start``. The cut-offs are a
    protocol parameter (every silo applies the same ones to its own data); without them they are
    derived from the fractions over all of ``data`` (:func:`temporal_cutoffs`). A user's targets
    in a period are all the distinct items they consumed in it and never before.

    Args:
        data: The dataset to split.
        history_length: Maximum number of history items ``H`` kept per evaluated user.
        valid_fraction: Share of the interactions in the validation period (without ``cutoffs``).
        test_fraction: Share of the interactions in the test period (without ``cutoffs``).
        cutoffs: ``(valid_start, test_start)`` timestamps, ``valid_start < test_start``.
        allow_empty: Return an empty period instead of raising when no user is evaluable in it.
        new_items: Items held out of training (module docstring).

    Returns:
        The split (with its cut-offs); ``train_sequences`` holds each user's train-period items.

    Raises:
        ValueError: If the arguments are out of range or (unless ``allow_empty``) a period has
            no evaluable user.
    """
    _check_history_length(history_length)
    if cutoffs is None:
        cutoffs = temporal_cutoffs(data.timestamps, valid_fraction, test_fraction)
        context = (
            f"split='temporal', valid_fraction={valid_fraction}, test_fraction={test_fraction}, "
            f"cut-offs {cutoffs[0]} and {cutoffs[1]}"
        )
    else:
        context = f"split='temporal', temporal_cutoffs=[{cutoffs[0]}, {cutoffs[1]}]"
    valid_start, test_start = (int(c) for c in cutoffs)
    if valid_start >= test_start:
        raise ValueError(
            f"temporal cut-offs must satisfy valid_start < test_start, got [{valid_start}, "
            f"{test_start}]"
        )
    users, items, times = data.users, data.items, data.timestamps
    train = times < valid_start
    before_test = times < test_start
    in_valid = before_test & ~train
    in_test = ~before_test
    before_valid = _group_by_user(users[train], items[train], data.num_users)
    before_test_items = _group_by_user(users[before_test], items[before_test], data.num_users)
    valid_items = _group_by_user(users[in_valid], items[in_valid], data.num_users)
    test_items = _group_by_user(users[in_test], items[in_test], data.num_users)
    held = _held_out(new_items)
    return Split(
        method="temporal",
        train_sequences=_without(before_valid, held),
        valid=_eval_users(
            before_valid, valid_items, history_length, "validation", context, allow_empty, held
        ),
        test=_eval_users(
            before_test_items, test_items, history_length, "test", context, allow_empty, held
        ),
        cutoffs=(valid_start, test_start),
        new_items=held,
    )


def leave_one_out_split(
    data: IndexedDataset,
    history_length: int,
    allow_empty: bool = False,
    new_items: np.ndarray | None = None,
) -> Split:
    """Hold out each user's last item for test and second-last item for validation.

    Users with fewer than 3 interactions keep everything in train and are not evaluated. A
    held-out item the user already consumed earlier is not a target (it would be masked out of
    the ranking), so such a user is not evaluated in that period.

    Args:
        data: The dataset to split.
        history_length: Maximum number of history items ``H`` kept per evaluated user.
        allow_empty: Return an empty period instead of raising when no user is evaluable in it.
        new_items: Items held out of training (module docstring).

    Returns:
        The split.

    Raises:
        ValueError: If ``history_length < 1`` or (unless ``allow_empty``) a period has no
            evaluable user.
    """
    _check_history_length(history_length)
    sequences = _group_by_user(data.users, data.items, data.num_users)
    empty = np.empty(0, dtype=np.int64)
    train, before_test, valid_items, test_items = [], [], [], []
    for seq in sequences:
        if len(seq) >= 3:
            train.append(seq[:-2])
            before_test.append(seq[:-1])
            valid_items.append(seq[-2:-1])
            test_items.append(seq[-1:])
        else:
            train.append(seq)
            before_test.append(seq)
            valid_items.append(empty)
            test_items.append(empty)
    context = "split='leave_one_out' (needs users with at least 3 interactions)"
    held = _held_out(new_items)
    return Split(
        method="leave_one_out",
        train_sequences=_without(train, held),
        valid=_eval_users(
            train, valid_items, history_length, "validation", context, allow_empty, held
        ),
        test=_eval_users(
            before_test, test_items, history_length, "test", context, allow_empty, held
        ),
        new_items=held,
    )


def _check_history_length(history_length: int) -> None:
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")


def _held_out(new_items: np.ndarray | None) -> np.ndarray:
    """The held-out items as a sorted int64 array (empty for none)."""
    if new_items is None:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.asarray(new_items, dtype=np.int64))


def _without(sequences: list[np.ndarray], held: np.ndarray) -> list[np.ndarray]:
    """Each sequence without the held-out items (order kept); unchanged when none is held."""
    if len(held) == 0:
        return sequences
    return [seq[~np.isin(seq, held)] for seq in sequences]


def _group_by_user(users: np.ndarray, items: np.ndarray, num_users: int) -> list[np.ndarray]:
    """Per user index, that user's items in their original (chronological) order."""
    # A stable sort by user keeps each user's interactions in time order.
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=num_users)
    groups = np.split(items[order].astype(np.int64, copy=False), np.cumsum(counts)[:-1])
    return list(groups)


def _eval_users(
    before: list[np.ndarray],
    period: list[np.ndarray],
    history_length: int,
    period_name: str,
    context: str,
    allow_empty: bool = False,
    held: np.ndarray | None = None,
) -> EvalUsers:
    """Evaluation users of one period from the items before it and the items in it.

    ``held`` items (new items) are left out of the histories, and a user with no other item
    before the period is not evaluated; targets and consumed items keep them.

    Raises:
        ValueError: If no user has both a history and a new item in the period (unless
            ``allow_empty``).
    """
    users, histories, targets, consumed = [], [], [], []
    for user, (seen, new) in enumerate(zip(before, period, strict=True)):
        if len(seen) == 0 or len(new) == 0:
            continue
        seen_set = np.unique(seen)
        fresh = np.setdiff1d(new, seen_set)
        if len(fresh) == 0:
            continue
        readable = seen if held is None or len(held) == 0 else seen[~np.isin(seen, held)]
        if len(readable) == 0:
            continue
        users.append(user)
        histories.append(readable[-history_length:])
        targets.append(fresh)
        consumed.append(seen_set)
    if not users and not allow_empty:
        raise ValueError(
            f"empty split: no user has a history and a new item in the {period_name} period "
            f"({context}); use more data or larger fractions"
        )
    return EvalUsers(
        users=np.asarray(users, dtype=np.int64),
        histories=histories,
        targets=targets,
        consumed=consumed,
    )
