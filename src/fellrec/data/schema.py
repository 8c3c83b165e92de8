"""The common data representations every reader produces and every later stage consumes.

Two levels:

* :class:`RawDataset` -- what a reader returns: pandas frames with the *original* string ids.
Readers
  validate their input and raise :class:`DataFormatError` naming the file, line or field.
* :class:`IndexedDataset` -- dense integer ids in numpy arrays, built once by :func:`index_dataset`.
All
  pure (L0) stages (k-core, splits, examples, partitions, metrics) work on this form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Columns every ``RawDataset.interactions`` frame has, in this order.
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
#: Columns every ``RawDataset.items`` frame has; readers may add ``brand`` and others.
ITEM_COLUMNS = ("item_id", "title", "categories")


class DataFormatError(ValueError):
    """Input data that cannot be read; the message names the file, line or field at fault."""


@dataclass(frozen=True)
class RawDataset:
    """A dataset as read from disk, before indexing.

    Attributes:
        name: Short name used in logs and cache keys (e.g. ``"ml-100k"``).
        interactions: One row per interaction with columns ``user_id`` (str), ``item_id`` (str) and
            ``timestamp`` (int64, seconds or any monotone clock).
        items: One row per item with ``item_id`` (str, unique), ``title`` (str) and ``categories``
            (a tuple of str, possibly empty); optionally more text columns such as ``brand``.
        users: Optional user attributes: ``user_id`` (str, unique) plus str columns
            (e.g. ``gender``, ``age``, ``occupation``).
        source: The file the interactions were read from, for messages about them.
        locate: Maps an interaction's label in ``interactions.index`` (its row position in the
            file's data) to its location, e.g. ``"u.data, line 12"``; ``None`` when unknown.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    source: str | None = None
    locate: Callable[[int], str] | None = None


@dataclass(frozen=True)
class IndexedDataset:
    """A dataset with dense ids ``0..n-1`` for users and items.

    Attributes:
        name: Dataset name.
        user_ids: Original id of each user index, shape ``(num_users,)``.
        item_ids: Original id of each item index, shape ``(num_items,)``.
        users: User index of each interaction, int64, shape ``(num_interactions,)``.
        items: Item index of each interaction, int64, same shape.
        timestamps: Timestamp of each interaction, int64, same shape. Interactions are sorted by
            timestamp; interactions with equal timestamps keep the order of the source file (a
            stable sort, as RecBole does), so the split is deterministic and matches other
            toolkits on the same files. Equal timestamps are common (ML-100K: a user often
            rates several movies in the same second), and which of them is "last" changes
            leave-one-out targets markedly.
        titles: Title of each item index.
        categories: Categories of each item index (tuple of str, possibly empty).
        user_attributes: Optional per-user attribute columns, each an array of str of shape
            ``(num_users,)``.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    titles: list[str]
    categories: list[tuple[str, ...]]
    user_attributes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        """Number of distinct users."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items in the catalog."""
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        """Number of interactions."""
        return len(self.users)


def index_dataset(raw: RawDataset) -> IndexedDataset:
    """Map original ids to dense indices and sort interactions chronologically.

    Items without an entry in ``raw.items`` are dropped from the interactions (their text is
    unknown, so a text recommender cannot use them); items no interaction refers to are dropped from
    the catalog.

    Args:
        raw: A dataset as returned by a reader.

    Returns:
        The indexed dataset.

    Raises:
        DataFormatError: If a required column is missing or nothing is left after matching
            interactions to item metadata.
    """
    for column in INTERACTION_COLUMNS:
        if column not in raw.interactions.columns:
            raise DataFormatError(f"{raw.name}: interactions lack the column {column!r}")
    for column in ITEM_COLUMNS:
        if column not in raw.items.columns:
            raise DataFormatError(f"{raw.name}: items lack the column {column!r}")
    known_items = set(raw.items["item_id"].astype(str))
    inter = raw.interactions.astype({"user_id": str, "item_id": str})
    inter = inter[inter["item_id"].isin(known_items)]
    if inter.empty:
        raise DataFormatError(
            f"{raw.name}: no interaction refers to an item with metadata (check that item ids in "
            "the interaction file match those in the item file)"
        )
    item_ids = np.array(sorted(inter["item_id"].unique()), dtype=object)
    meta = raw.items.astype({"item_id": str}).drop_duplicates("item_id").set_index("item_id")
    meta = meta.loc[item_ids]
    titles = [str(t) for t in meta["title"].tolist()]
    categories = [
        tuple(str(c) for c in cats) if cats is not None else () for cats in meta["categories"]
    ]
    return index_interactions(raw.name, inter, item_ids, titles, categories, raw.users)


def index_interactions(
    name: str,
    interactions: pd.DataFrame,
    item_ids: np.ndarray,
    titles: list[str],
    categories: list[tuple[str, ...]],
    users: pd.DataFrame | None = None,
) -> IndexedDataset:
    """Index interactions against a fixed item list and sort them chronologically.

    Args:
        name: Dataset name.
        interactions: ``user_id`` and ``item_id`` (str) and ``timestamp`` columns; every item id
            is one of ``item_ids``.
        item_ids: The item of each index (their order fixes the item indices).
        titles: Title of each item index.
        categories: Categories of each item index.
        users: Optional user attributes (``user_id`` plus str columns).

    Returns:
        The indexed dataset; user indices follow the sorted user ids.
    """
    user_ids = np.array(sorted(interactions["user_id"].unique()), dtype=object)
    user_index = pd.Index(user_ids).get_indexer(interactions["user_id"].to_numpy())
    item_index = pd.Index(item_ids).get_indexer(interactions["item_id"].to_numpy())
    timestamps = interactions["timestamp"].to_numpy(dtype=np.int64)
    # Stable: equal timestamps keep the file order. Breaking ties by item index instead would
    # follow the id strings' order, which on ML-100K (low ids = old, popular movies) biases which
    # item is held out (popularity's leave-one-out NDCG@10 ranges 0.026-0.057 over tie orders).
    order = np.argsort(timestamps, kind="stable")
    user_attributes: dict[str, np.ndarray] = {}
    if users is not None and not users.empty:
        attrs = users.astype({"user_id": str}).drop_duplicates("user_id").set_index("user_id")
        attrs = attrs.reindex(user_ids)
        for column in attrs.columns:
            user_attributes[str(column)] = attrs[column].fillna("unknown").astype(str).to_numpy()
    return IndexedDataset(
        name=name,
        user_ids=user_ids,
        item_ids=np.asarray(item_ids, dtype=object),
        users=user_index.astype(np.int64)[order],
        items=item_index.astype(np.int64)[order],
        timestamps=timestamps[order],
        titles=list(titles),
        categories=list(categories),
        user_attributes=user_attributes,
    )


@dataclass(frozen=True)
class EvalUsers:
    """The users evaluated in one period (validation or test), aligned by position.

    Attributes:
        users: User indices, int64, shape ``(U,)``, ascending.
        histories: Per user, the last at most ``H`` items consumed before the period, oldest first.
        targets: Per user, the distinct items consumed in the period and never before (sorted,
            non-empty). Users with no such item are not evaluated in that period.
        consumed: Per user, all distinct items consumed before the period (sorted); they are masked
            out of the ranking.
    """

    users: np.ndarray
    histories: list[np.ndarray]
    targets: list[np.ndarray]
    consumed: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)

    def select(self, positions: np.ndarray) -> EvalUsers:
        """The users at ``positions`` (indices into :attr:`users`), in that order."""
        return EvalUsers(
            users=self.users[positions],
            histories=[self.histories[p] for p in positions],
            targets=[self.targets[p] for p in positions],
            consumed=[self.consumed[p] for p in positions],
        )


@dataclass(frozen=True)
class Split:
    """A train / validation / test split.

    Attributes:
        method: ``"temporal"`` or ``"leave_one_out"``.
        train_sequences: For every user index (length ``num_users``), the chronological item indices
            of that user's training interactions (int64, possibly empty).
        valid: Validation users.
        test: Test users.
        cutoffs: Temporal split: the ``(valid_start, test_start)`` timestamps it cut at (an
            interaction at ``t`` is in training when ``t < valid_start``, in test when
            ``t >= test_start``); ``None`` for leave-one-out.
        new_items: Items held out of training (``data.new_items``), sorted; they occur in no
            training sequence and no history, only as validation or test targets.
    """

    method: str
    train_sequences: list[np.ndarray]
    valid: EvalUsers
    test: EvalUsers
    cutoffs: tuple[int, int] | None = None
    new_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class TrainExamples:
    """Next-item training examples from sliding windows over the training sequences.

    Attributes:
        users: User index of each example, int64, shape ``(E,)``.
        histories: Item indices of each example's history, int64, shape ``(E, H)``, right-aligned
            (the last column is the most recent item) and left-padded with ``-1``.
        targets: The next item of each example, int64, shape ``(E,)``.
    """

    users: np.ndarray
    histories: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)
