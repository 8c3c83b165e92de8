"""Per-client statistics of a partition and how heterogeneous the clients are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fellrec.data.partition import first_category_index
from fellrec.data.schema import Split, TrainExamples

#: Per-client count columns, in table order.
COUNT_COLUMNS = (
    "client",
    "users",
    "train_examples",
    "train_interactions",
    "valid_users",
    "test_users",
)


def partition_statistics(
    assignment: np.ndarray,
    split: Split,
    examples: TrainExamples,
    item_categories: Sequence[tuple[str, ...]],
    num_clients: int,
    against_catalog: bool = False,
) -> dict[str, Any]:
    """Count each client's users, examples and interactions and measure category skew.

    Heterogeneity is measured on the first category of each train interaction: every client's
    category distribution is compared with the global one (all clients' train interactions
    together) by the Jensen-Shannon divergence (base 2, so in ``[0, 1]``; 0 means identical
    distributions).

    Args:
        assignment: Client of each user, shape ``(num_users,)``.
        split: The split the clients train and evaluate on.
        examples: The training examples.
        item_categories: Categories of each item index.
        num_clients: Number of clients.
        against_catalog: Compare with the catalog's categories instead (every item once): what a
            silo alone can compare with.

    Returns:
        A JSON-serialisable dict with ``clients`` (one row per client: the
        :data:`COUNT_COLUMNS` plus ``js_divergence``), ``categories`` (names),
        ``global_distribution``, ``client_distributions`` (one list per client, all zeros for a
        client without train interactions), ``mean_js_divergence`` (mean over clients with
        train interactions) and ``reference`` (``"all clients"`` or ``"catalog"``).
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    item_category, names = first_category_index(item_categories)
    lengths = np.array([len(s) for s in split.train_sequences], dtype=np.int64)
    counts = _category_counts(
        split.train_sequences, assignment, item_category, len(names), num_clients
    )
    if against_catalog:
        global_dist = _normalise(np.bincount(item_category, minlength=len(names)))
    else:
        global_dist = _normalise(counts.sum(0))
    client_dists = np.array([_normalise(row) for row in counts])
    has_data = counts.sum(1) > 0
    divergences = np.array(
        [
            js_divergence(d, global_dist) if ok else float("nan")
            for d, ok in zip(client_dists, has_data, strict=True)
        ]
    )

    def per_client(ids: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(assignment[ids], weights=weights, minlength=num_clients)

    all_users = np.arange(len(assignment))
    columns = {
        "users": per_client(all_users),
        "train_examples": per_client(examples.users),
        "train_interactions": per_client(all_users, lengths.astype(np.float64)),
        "valid_users": per_client(split.valid.users),
        "test_users": per_client(split.test.users),
    }
    rows = [
        {"client": c}
        | {name: int(values[c]) for name, values in columns.items()}
        | {"js_divergence": None if np.isnan(divergences[c]) else float(divergences[c])}
        for c in range(num_clients)
    ]
    return {
        "clients": rows,
        "categories": names,
        "global_distribution": global_dist.tolist(),
        "client_distributions": client_dists.tolist(),
        "mean_js_divergence": float(divergences[has_data].mean()) if has_data.any() else 0.0,
        "reference": "catalog" if against_catalog else "all clients",
    }


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two probability vectors, base 2 (in ``[0, 1]``).

    Args:
        p: A probability vector.
        q: A probability vector of the same length.

    Returns:
        ``(KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    return float((_kl(p, m) + _kl(q, m)) / 2)


def format_partition_table(stats: dict[str, Any]) -> str:
    """Render :func:`partition_statistics` output as a plain-text table.

    Args:
        stats: The dict returned by :func:`partition_statistics`.

    Returns:
        One row per client plus a total row and a line with the mean JS divergence.
    """
    header = [*COUNT_COLUMNS, "js_div"]
    rows = [
        [str(row[c]) for c in COUNT_COLUMNS] + [_format_js(row["js_divergence"])]
        for row in stats["clients"]
    ]
    totals = [sum(row[c] for row in stats["clients"]) for c in COUNT_COLUMNS[1:]]
    rows.append(["total", *map(str, totals), ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    separator = "  ".join("-" * w for w in widths)
    body = [line(header), separator, *map(line, rows[:-1]), separator, line(rows[-1])]
    reference = (
        "the catalog's (every item once)"
        if stats.get("reference") == "catalog"
        else "the global one"
    )
    summary = (
        "mean Jensen-Shannon divergence (base 2) of client category distributions to "
        f"{reference}: {stats['mean_js_divergence']:.4f}"
    )
    return "\n".join([*body, summary])


def _category_counts(
    sequences: Sequence[np.ndarray],
    assignment: np.ndarray,
    item_category: np.ndarray,
    num_categories: int,
    num_clients: int,
) -> np.ndarray:
    """Train interactions per (client, category), shape ``(num_clients, num_categories)``."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros((num_clients, num_categories), dtype=np.int64)
    clients = np.repeat(assignment, lengths)
    categories = item_category[np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])]
    flat = np.bincount(
        clients * num_categories + categories, minlength=num_clients * num_categories
    )
    return flat.reshape(num_clients, num_categories)


def _normalise(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts), dtype=np.float64)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL divergence in bits; terms with ``p == 0`` contribute nothing."""
    support = p > 0
    return float(np.sum(p[support] * np.log2(p[support] / q[support])))


def _format_js(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def new_item_statistics(split: Split, num_items: int) -> dict[str, int] | None:
    """What ``data.new_items`` held out: items, and the validation and test targets among them.

    Args:
        split: The split (its ``new_items``).
        num_items: The catalog's items.

    Returns:
        ``{"held_out": n, "items": I, "valid_targets": v, "test_targets": t, "valid_users": vu,
        "test_users": tu}`` (targets that are held-out items, and users with such a target), or
        None when no item is held out.
    """
    held = split.new_items
    if len(held) == 0:
        return None
    counts = {"held_out": len(held), "items": num_items}
    for name, users in (("valid", split.valid), ("test", split.test)):
        flags = [np.isin(targets, held) for targets in users.targets]
        counts[f"{name}_targets"] = int(sum(int(f.sum()) for f in flags))
        counts[f"{name}_users"] = int(sum(bool(f.any()) for f in flags))
    return counts


def format_new_items(split: Split, num_items: int) -> str | None:
    """One line on the held-out items (``fellrec data stats``), or None without any."""
    counts = new_item_statistics(split, num_items)
    if counts is None:
        return None
    return (
        f"new items (data.new_items): {counts['held_out']} of {counts['items']} items held out "
        f"of training; they are the targets of {counts['valid_users']} validation and "
        f"{counts['test_users']} test users ({counts['valid_targets']} and "
        f"{counts['test_targets']} targets)"
    )
