"""Evaluation slices: the evaluated users grouped by what the language model should help with.

Three groupings of the validation or test users, each defined from the *training* data only (so
the same cut points serve validation and test, and no evaluation target moves them):

* **popularity** of the target item, by its number of training interactions. Items are sorted by
  training count, most interacted first, and cut into three groups holding equal shares of the
  training *interactions* (not of the items): ``head`` = the items with a count of at least
  ``head_min_count``, the count of the item at which the running total first reaches a third of
  all training interactions; ``torso`` = counts from ``torso_min_count`` (where the running total
  first reaches two thirds) up to ``head_min_count``; ``tail`` = the rest with at least one
  training interaction; ``new`` = items with none (under ``data.new_items`` the held-out items).
  Items with equal counts always fall in the same group, so a group can hold a little more than a
  third; with few distinct counts ``torso`` can be empty. Equal interaction shares (rather than
  equal numbers of items) give every group a comparable number of test targets, so the tail's
  interval is not a handful of users wide.
* **history** length of the user: their number of training interactions (the same count for
  validation and test), cut into terciles of the users with at least one: ``short`` below
  ``medium_min_length`` (the length of the user at position ``n // 3`` of the ``n`` users sorted
  by length), ``medium`` below ``long_min_length`` (position ``2n // 3``), ``long`` from there.
  A user with no training interaction (possible under the temporal split) counts as ``short``.
* **client_items**, per client: ``seen`` when the target item occurs in the training data of the
  user's own client (any of its users), ``unseen`` when it does not (the item only other clients,
  or nobody, trained on). The definition is the data's, the same for every strategy (centralized
  training included), so the slices compare across models.

A user with several targets (the temporal split) counts in every slice one of its targets falls
in, with its whole-user value (slices then overlap); under leave-one-out every user has one
target, and each grouping partitions the users exactly.

Every slice reports the mean of each metric over its users and percentile bootstrap intervals
(:func:`fellrec.metrics.bootstrap.bootstrap_intervals`, the test summary's bootstrap, drawing the
slice's users once for all its metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fellrec.metrics.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, bootstrap_intervals

#: Popularity groups of an item, in the order of :attr:`SliceDefinition.item_group`'s codes.
POPULARITY_GROUPS = ("head", "torso", "tail", "new")
#: History-length groups of a user, in the order of :attr:`SliceDefinition.user_group`'s codes.
HISTORY_GROUPS = ("short", "medium", "long")
#: Whether the target is in the training data of the user's own client.
CLIENT_ITEM_GROUPS = ("seen", "unseen")
#: Every slice name, ``<grouping>/<group>``, in report order.
SLICE_NAMES = (
    *(f"popularity/{g}" for g in POPULARITY_GROUPS),
    *(f"history/{g}" for g in HISTORY_GROUPS),
    *(f"client_items/{g}" for g in CLIENT_ITEM_GROUPS),
)
#: The metrics slices are logged with (and get intervals for in every validation round).
SLICE_LOGGED_METRICS = ("ndcg@10", "recall@10")
#: Added to the seed of the slices' bootstrap generators (apart from the summary's intervals).
_SLICE_SEED_OFFSET = 500_009


def popularity_cuts(counts: np.ndarray) -> tuple[int, int]:
    """``(head_min_count, torso_min_count)``: the counts where a third and two thirds are reached.

    Args:
        counts: Training interactions of every item ``(I,)``.

    Returns:
        The two cut counts (both 0 when there is no training interaction).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return 0, 0
    ordered = np.sort(counts)[::-1]  # (I,) most interacted first
    running = np.cumsum(ordered)  # (I,)
    # Integer comparison (3 * running >= k * total) avoids rounding at the thirds.
    head = int(ordered[np.argmax(3 * running >= total)])
    torso = int(ordered[np.argmax(3 * running >= 2 * total)])
    return head, torso


def item_groups(counts: np.ndarray) -> np.ndarray:
    """Each item's popularity group code (index into :data:`POPULARITY_GROUPS`) ``(I,)``."""
    counts = np.asarray(counts, dtype=np.int64)
    head, torso = popularity_cuts(counts)
    groups = np.full(len(counts), 2, dtype=np.int8)  # tail
    groups[counts >= torso] = 1
    groups[counts >= head] = 0
    groups[counts == 0] = 3
    return groups


def history_cuts(lengths: np.ndarray) -> tuple[int, int]:
    """``(medium_min_length, long_min_length)``: terciles of the users with a training interaction.

    Args:
        lengths: Training interactions of every user ``(num_users,)``.

    Returns:
        The lengths at positions ``n // 3`` and ``2n // 3`` of the ``n`` users with at least one
        training interaction, sorted by length (both 1 when there is none).
    """
    active = np.sort(np.asarray(lengths, dtype=np.int64)[np.asarray(lengths) > 0])
    if len(active) == 0:
        return 1, 1
    return int(active[len(active) // 3]), int(active[2 * len(active) // 3])


def user_groups(lengths: np.ndarray) -> np.ndarray:
    """Each user's history group code (index into :data:`HISTORY_GROUPS`) ``(num_users,)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    medium, long = history_cuts(lengths)
    groups = np.zeros(len(lengths), dtype=np.int8)
    groups[lengths >= medium] = 1
    groups[lengths >= long] = 2  # medium >= 1, so a user without any stays short
    return groups


@dataclass(frozen=True)
class SliceDefinition:
    """What decides every user's slices, computed once from the training data.

    Attributes:
        item_counts: Training interactions of each item ``(I,)``.
        item_group: Popularity group code of each item ``(I,)``.
        user_lengths: Training interactions of each user ``(num_users,)``.
        user_group: History group code of each user ``(num_users,)``.
        user_clients: Client of each user ``(num_users,)``.
        client_items: Whether each item occurs in each client's training data ``(N, I)``.
    """

    item_counts: np.ndarray
    item_group: np.ndarray
    user_lengths: np.ndarray
    user_group: np.ndarray
    user_clients: np.ndarray
    client_items: np.ndarray

    def cuts(self) -> dict[str, Any]:
        """The cut points and group sizes, as ``results.json`` records them."""
        head, torso = popularity_cuts(self.item_counts)
        medium, long = history_cuts(self.user_lengths)
        codes = range(len(POPULARITY_GROUPS))
        items = {
            name: int((self.item_group == code).sum())
            for code, name in zip(codes, POPULARITY_GROUPS, strict=True)
        }
        interactions = {
            name: int(self.item_counts[self.item_group == code].sum())
            for code, name in zip(codes, POPULARITY_GROUPS, strict=True)
        }
        users = {
            name: int((self.user_group == code).sum()) for code, name in enumerate(HISTORY_GROUPS)
        }
        return {
            "popularity": {
                "rule": "items by training count, cut into thirds of the training interactions",
                "head_min_count": head,
                "torso_min_count": torso,
                "items": items,
                "interactions": interactions,
            },
            "history": {
                "rule": "users' training interactions, terciles of the users with at least one",
                "medium_min_length": medium,
                "long_min_length": long,
                "users": users,
            },
            "client_items": {
                "rule": "target in the training data of the user's own client (seen) or not",
                "items_per_client": [int(row.sum()) for row in self.client_items],
            },
        }

    def membership(self, users: np.ndarray, targets: Sequence[np.ndarray]) -> dict[str, Tensor]:
        """Which slices each evaluated user is in.

        Args:
            users: User indices ``(U,)``.
            targets: Each user's target items (non-empty).

        Returns:
            Slice name (:data:`SLICE_NAMES`) -> bool ``(U,)``.
        """
        users = np.asarray(users, dtype=np.int64)
        lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(users))
        flat = (
            np.concatenate([np.asarray(t, dtype=np.int64) for t in targets])
            if len(users)
            else np.zeros(0, dtype=np.int64)
        )
        owner = np.repeat(np.arange(len(users)), lengths)  # (L,) row of each target
        seen = self.client_items[self.user_clients[users[owner]], flat]  # (L,)
        masks: dict[str, np.ndarray] = {}

        def any_target(flags: np.ndarray) -> np.ndarray:
            hit = np.zeros(len(users), dtype=bool)
            hit[owner[flags]] = True
            return hit

        for code, name in enumerate(POPULARITY_GROUPS):
            masks[f"popularity/{name}"] = any_target(self.item_group[flat] == code)
        for code, name in enumerate(HISTORY_GROUPS):
            masks[f"history/{name}"] = self.user_group[users] == code
        masks["client_items/seen"] = any_target(seen)
        masks["client_items/unseen"] = any_target(~seen)
        return {name: torch.from_numpy(masks[name]) for name in SLICE_NAMES}


def define_slices(
    train_sequences: Sequence[np.ndarray],
    user_clients: np.ndarray,
    num_items: int,
    num_clients: int,
) -> SliceDefinition:
    """The slices of a split's training data and its clients.

    Args:
        train_sequences: Every user's training items (index = user).
        user_clients: Client of every user ``(num_users,)``.
        num_items: I.
        num_clients: N.
    """
    user_clients = np.asarray(user_clients, dtype=np.int64)
    lengths = np.fromiter(
        (len(s) for s in train_sequences), dtype=np.int64, count=len(train_sequences)
    )
    flat = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
        if len(train_sequences)
        else np.zeros(0, dtype=np.int64)
    )
    counts = np.bincount(flat, minlength=num_items)
    client_items = np.zeros((num_clients, num_items), dtype=bool)
    client_items[np.repeat(user_clients, lengths), flat] = True
    return SliceDefinition(
        item_counts=counts,
        item_group=item_groups(counts),
        user_lengths=lengths,
        user_group=user_groups(lengths),
        user_clients=user_clients,
        client_items=client_items,
    )


def slice_summary(
    per_user: Mapping[str, Tensor],
    membership: Mapping[str, Tensor],
    clients: Tensor,
    num_clients: int,
    names: Sequence[str],
    cuts: Mapping[str, Any] | None = None,
    interval_metrics: Sequence[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Every slice's users, metric means and bootstrap intervals; the client-item slices per client.

    Args:
        per_user: Metric name -> value of every evaluated user ``(U,)``.
        membership: Slice name -> bool ``(U,)`` (:meth:`SliceDefinition.membership`).
        clients: Client of each user ``(U,)``.
        num_clients: N.
        names: The metrics to report.
        cuts: The definition's cut points (:meth:`SliceDefinition.cuts`), recorded alongside.
        interval_metrics: The metrics that get intervals (default: all of ``names``).
        resamples: Resamples per interval (0: no intervals).
        confidence: Coverage of the intervals.
        seed: Seed of the resampling; each slice draws from its own generator, one draw of its
            users for all its metrics.

    Returns:
        ``{"definition": cuts, "confidence": c, "resamples": R, "groups": {slice: {"users": n,
        metric: mean, "ci": {metric: [low, high]}}}, "clients": {"<id>": {slice: {"users": n,
        metric: mean}}}}``; a slice without users has ``users: 0`` and nothing else.
    """
    covered = [m for m in names if interval_metrics is None or m in interval_metrics]
    columns = torch.stack([per_user[m].double() for m in names], dim=1)  # (U, M)
    groups: dict[str, dict[str, Any]] = {}
    for slice_index, (slice_name, members) in enumerate(membership.items()):
        row: dict[str, Any] = {"users": int(members.sum())}
        if row["users"]:
            chosen = columns[members]  # (n, M)
            row.update(zip(names, chosen.mean(dim=0).tolist(), strict=True))
            row["ci"] = {}
            if covered and resamples > 0:
                # One draw of the slice's users serves every metric (as one bootstrap would).
                generator = torch.Generator().manual_seed(
                    seed * 1_000_003 + _SLICE_SEED_OFFSET + slice_index
                )
                wanted = [names.index(m) for m in covered]
                bounds = bootstrap_intervals(chosen[:, wanted], resamples, confidence, generator)
                row["ci"] = {m: list(b) for m, b in zip(covered, bounds or [], strict=False)}
        groups[slice_name] = row
    per_client: dict[str, dict[str, dict[str, Any]]] = {}
    for client in range(num_clients):
        own = clients == client
        rows: dict[str, dict[str, Any]] = {}
        for slice_name, members in membership.items():
            if not slice_name.startswith("client_items/"):
                continue
            chosen = own & members
            row = {"users": int(chosen.sum())}
            if row["users"]:
                row.update({m: float(per_user[m][chosen].double().mean()) for m in names})
            rows[slice_name] = row
        per_client[str(client)] = rows
    return {
        "definition": dict(cuts) if cuts is not None else None,
        "confidence": confidence,
        "resamples": resamples,
        "groups": groups,
        "clients": per_client,
    }


def values_by_name(values: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Per-user values ``(U, M)`` as metric name -> column ``(U,)``."""
    return {name: values[:, j] for j, name in enumerate(names)}
