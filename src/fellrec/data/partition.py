"""Assign users to federated clients: iid, K-means on BPR embeddings, Dirichlet, attribute."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from fellrec.data.mf import train_bpr_embeddings

#: Partition methods accepted by :func:`partition_users`.
PARTITION_METHODS = ("iid", "kmeans", "dirichlet", "attribute")
#: Category name given to items without any category.
NO_CATEGORY = "(none)"


def partition_users(
    method: str,
    num_clients: int,
    seed: int,
    *,
    train_sequences: Sequence[np.ndarray],
    num_items: int,
    item_categories: Sequence[tuple[str, ...]],
    user_attributes: Mapping[str, np.ndarray],
    attribute: str | None = None,
    concentration: float = 0.5,
    embedding_dim: int = 32,
    embedding_epochs: int = 30,
) -> np.ndarray:
    """Assign every user to one of ``num_clients`` clients with the named method.

    Args:
        method: ``"iid"``, ``"kmeans"``, ``"dirichlet"`` or ``"attribute"``.
        num_clients: Number of clients.
        seed: Seed of every random choice.
        train_sequences: Per user index, the training items (defines the number of users).
        num_items: Number of items.
        item_categories: Categories of each item index; the first one counts (``dirichlet``).
        user_attributes: Per-user attribute columns (``attribute``).
        attribute: Name of the column in ``user_attributes`` to group by (``attribute``).
        concentration: Dirichlet concentration; smaller means more heterogeneous clients.
        embedding_dim: BPR embedding dimension (``kmeans``).
        embedding_epochs: BPR training epochs (``kmeans``).

    Returns:
        The client of each user, int64, shape ``(num_users,)``; every client has a user.

    Raises:
        ValueError: If the method is unknown, ``num_clients`` is out of range, or the method's
            inputs are missing or unusable.
    """
    num_users = len(train_sequences)
    _check_num_clients(num_clients, num_users)
    if method == "iid":
        return iid_partition(num_users, num_clients, seed)
    if method == "kmeans":
        embeddings = train_bpr_embeddings(
            train_sequences,
            num_users,
            num_items,
            dim=embedding_dim,
            epochs=embedding_epochs,
            seed=seed,
        )
        return kmeans_partition(embeddings, num_clients, seed)
    if method == "dirichlet":
        dominant = dominant_categories(train_sequences, item_categories)
        return dirichlet_partition(dominant, num_clients, concentration, seed)
    if method == "attribute":
        if attribute is None or attribute not in user_attributes:
            available = sorted(user_attributes) or "none (the dataset has no user attributes)"
            raise ValueError(
                f"attribute partition needs a user attribute; got attribute={attribute!r}, "
                f"available: {available}"
            )
        return attribute_partition(np.asarray(user_attributes[attribute]), num_clients)
    raise ValueError(f"unknown partition method {method!r}; expected one of {PARTITION_METHODS}")


def iid_partition(num_users: int, num_clients: int, seed: int) -> np.ndarray:
    """Deal users at random to clients, so client sizes differ by at most one.

    Args:
        num_users: Number of users.
        num_clients: Number of clients.
        seed: Seed of the shuffle.

    Returns:
        The client of each user, int64, shape ``(num_users,)``.

    Raises:
        ValueError: If ``num_clients`` is out of range.
    """
    _check_num_clients(num_clients, num_users)
    order = np.random.default_rng(seed).permutation(num_users)
    assignment = np.empty(num_users, dtype=np.int64)
    assignment[order] = np.arange(num_users) % num_clients
    return assignment


def kmeans_partition(user_embeddings: np.ndarray, num_clients: int, seed: int) -> np.ndarray:
    """Cluster user embeddings with K-means; each cluster is a client.

    Clients are numbered in order of their first user, so the numbering does not depend on
    K-means' arbitrary label order. A cluster left empty (possible with duplicate embeddings)
    receives a random user of the largest one.

    Args:
        user_embeddings: One row per user, shape ``(num_users, dim)``.
        num_clients: Number of clients (clusters).
        seed: K-means ``random_state``.

    Returns:
        The client of each user, int64, shape ``(num_users,)``; every client has a user.

    Raises:
        ValueError: If ``num_clients`` is out of range.
    """
    embeddings = np.asarray(user_embeddings, dtype=np.float64)
    _check_num_clients(num_clients, len(embeddings))
    kmeans = KMeans(n_clusters=num_clients, n_init=10, random_state=seed)
    with warnings.catch_warnings():
        # Duplicate embeddings can leave clusters empty (sklearn warns); they are filled below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = kmeans.fit_predict(embeddings).astype(np.int64)
    labels = _fill_empty_clients(labels, num_clients, np.random.default_rng(seed))
    return _number_by_first_user(labels)


def dirichlet_partition(
    user_categories: np.ndarray, num_clients: int, concentration: float, seed: int
) -> np.ndarray:
    """Split each category's users among clients in proportions drawn from ``Dir(concentration)``.

    A small concentration gives each category to few clients (heterogeneous clients); a large
    one spreads every category evenly (close to iid). Clients left empty afterwards receive a
    random user of the largest client.

    Args:
        user_categories: Dominant category index of each user, shape ``(num_users,)``.
        num_clients: Number of clients.
        concentration: Dirichlet concentration, ``> 0``.
        seed: Seed of the shuffles and proportions.

    Returns:
        The client of each user, int64, shape ``(num_users,)``; every client has a user.

    Raises:
        ValueError: If ``num_clients`` is out of range or ``concentration <= 0``.
    """
    categories = np.asarray(user_categories)
    _check_num_clients(num_clients, len(categories))
    if not concentration > 0:
        raise ValueError(f"Dirichlet concentration must be > 0, got {concentration}")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(categories), dtype=np.int64)
    for category in np.unique(categories):
        members = rng.permutation(np.flatnonzero(categories == category))
        shares = rng.dirichlet(np.full(num_clients, concentration))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            assignment[chunk] = client
    return _fill_empty_clients(assignment, num_clients, rng)


def attribute_partition(values: np.ndarray, num_clients: int) -> np.ndarray:
    """Group users by an attribute; whole attribute values go to clients, balancing sizes.

    Distinct values are taken from the most to the least frequent (ties by value) and each goes
    to the client with the fewest users so far (ties to the lowest client index).

    Args:
        values: The attribute value of each user, shape ``(num_users,)``.
        num_clients: Number of clients.

    Returns:
        The client of each user, int64, shape ``(num_users,)``.

    Raises:
        ValueError: If ``num_clients`` is out of range or there are fewer distinct values than
            clients.
    """
    values = np.asarray(values).astype(str)
    _check_num_clients(num_clients, len(values))
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(distinct) < num_clients:
        raise ValueError(
            f"attribute partition needs at least as many distinct attribute values as clients: "
            f"num_clients={num_clients} but only {len(distinct)} distinct values "
            f"({', '.join(distinct)})"
        )
    # np.unique sorts the values, and a stable sort on -count keeps that order within ties.
    load = np.zeros(num_clients, dtype=np.int64)
    client_of_value = np.empty(len(distinct), dtype=np.int64)
    for value in np.argsort(-counts, kind="stable"):
        client = int(np.argmin(load))
        client_of_value[value] = client
        load[client] += counts[value]
    return client_of_value[inverse.ravel()]


def first_category_index(
    item_categories: Sequence[tuple[str, ...]],
) -> tuple[np.ndarray, list[str]]:
    """Index every item by its first category.

    Args:
        item_categories: Categories of each item index; items without one get ``"(none)"``.

    Returns:
        The category index of each item (int64, shape ``(num_items,)``) and the sorted category
        names it indexes into.
    """
    firsts = np.array([cats[0] if cats else NO_CATEGORY for cats in item_categories], dtype=str)
    names, index = np.unique(firsts, return_inverse=True)
    return index.ravel().astype(np.int64), [str(n) for n in names]


def dominant_categories(
    train_sequences: Sequence[np.ndarray], item_categories: Sequence[tuple[str, ...]]
) -> np.ndarray:
    """Each user's most frequent first-category among their training items.

    Ties go to the category that comes first by name. Users without training items get a
    category of their own (index = number of categories), so they are spread like any other.

    Args:
        train_sequences: Per user index, the training items.
        item_categories: Categories of each item index.

    Returns:
        The dominant category index of each user, int64, shape ``(num_users,)``.
    """
    item_category, names = first_category_index(item_categories)
    lengths = np.array([len(s) for s in train_sequences], dtype=np.int64)
    dominant = np.full(len(lengths), len(names), dtype=np.int64)
    if lengths.sum() == 0:
        return dominant
    users = np.repeat(np.arange(len(lengths)), lengths)
    categories = item_category[np.concatenate([np.asarray(s) for s in train_sequences])]
    # Count (user, category) pairs sparsely: a dense users x categories table can be huge.
    pairs, counts = np.unique(users * len(names) + categories, return_counts=True)
    pair_users, pair_categories = pairs // len(names), pairs % len(names)
    order = np.lexsort((pair_categories, -counts, pair_users))
    first_of_user = np.ones(len(order), dtype=bool)
    first_of_user[1:] = pair_users[order][1:] != pair_users[order][:-1]
    best = order[first_of_user]
    dominant[pair_users[best]] = pair_categories[best]
    return dominant


def _check_num_clients(num_clients: int, num_users: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_users:
        raise ValueError(
            f"more clients than users: num_clients={num_clients} but only {num_users} users"
        )


def _fill_empty_clients(
    assignment: np.ndarray, num_clients: int, rng: np.random.Generator
) -> np.ndarray:
    """Move a random user of the largest client to each empty client."""
    assignment = assignment.copy()
    for client in range(num_clients):
        sizes = np.bincount(assignment, minlength=num_clients)
        if sizes[client] == 0:
            donors = np.flatnonzero(assignment == np.argmax(sizes))
            assignment[rng.choice(donors)] = client
    return assignment


def _number_by_first_user(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0..K-1`` so client 0 holds user 0, the next new label is client 1, etc."""
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]
