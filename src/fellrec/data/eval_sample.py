"""A seeded share of the evaluable users (``data.eval_user_fraction``), for costly recommenders.

Evaluating a generative recommender costs a beam search per user (about a second per user on a
CPU), so ranking every MovieLens-100K user at every round can cost more than training. With
``data.eval_user_fraction`` below 1, validation and test rank only the users that a seeded hash
of their *original* user id keeps: the same people whichever strategy, partition or process runs,
and in a deployment each silo keeps the same people it would keep in one central run, without
knowing the others' users. The same users are kept in validation and in test (each period still
has its own targets), and every model of a comparison ranks the same users, baselines included.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from fellrec.data.schema import EvalUsers, Split

#: What the error says when the share keeps none of a period's users.
NONE_KEPT = (
    "data.eval_user_fraction={fraction} keeps none of the {users} users evaluable in the "
    "{period} period; raise it (1 evaluates everyone)"
)


def kept_user_ids(user_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool ``(len(user_ids),)``: which users a ``fraction`` keeps, by a hash of id and seed.

    Each user is kept when the first 8 bytes of ``blake2b(seed, id)``, read as a fraction of
    2^64, fall below ``fraction``: independent of every other user, so a silo decides alone.

    Args:
        user_ids: Original user ids (strings or numbers, as the data has them).
        fraction: Share of users to keep, in ``(0, 1]``; 1 keeps everyone without hashing.
        seed: ``data.seed``.
    """
    if fraction >= 1.0:
        return np.ones(len(user_ids), dtype=bool)
    limit = fraction * 2.0**64
    kept = np.empty(len(user_ids), dtype=bool)
    for position, user_id in enumerate(user_ids):
        digest = hashlib.blake2b(f"{int(seed)}\0{user_id}".encode(), digest_size=8).digest()
        kept[position] = int.from_bytes(digest, "big") < limit
    return kept


def sample_eval_users(split: Split, user_ids: np.ndarray, fraction: float, seed: int) -> Split:
    """``split`` with validation and test restricted to the users ``fraction`` keeps.

    Training is untouched: every user still trains, and the kept users' histories, targets and
    consumed items are as before.

    Args:
        split: The full split.
        user_ids: The dataset's original user id of each user index.
        fraction: ``data.eval_user_fraction``, in ``(0, 1]``.
        seed: ``data.seed``.
    """
    if fraction >= 1.0:
        return split
    kept = kept_user_ids(user_ids, fraction, seed)

    def restricted(users: EvalUsers) -> EvalUsers:
        return users.select(np.flatnonzero(kept[users.users]))

    return dataclasses.replace(split, valid=restricted(split.valid), test=restricted(split.test))
