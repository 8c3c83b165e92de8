"""Series over rounds read out of a run's ``history`` (the per-round records of ``results.json``).

A record holds ``round``, per-slot ``train_loss``/``lr``/``heating_weight`` lists, an optional
``similarity`` matrix and, when validation ran that round, ``val`` (``overall``/``clients``/
``balance``). Missing values (no validation that round, a client without users, a non-finite value
written as ``null``) come out as ``nan`` so that plots leave gaps instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

NAN = float("nan")
History = Sequence[Mapping[str, Any]]


def as_float(value: Any) -> float:
    """``value`` as a float; ``None`` and non-numbers become ``nan``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NAN
    return float(value)


def rounds(history: History) -> list[int]:
    """The round index of each record."""
    return [int(record.get("round", index)) for index, record in enumerate(history)]


def num_clients(results: Mapping[str, Any]) -> int:
    """Number of clients of a run (from its test summary, else from its history)."""
    clients = results.get("clients")
    if isinstance(clients, Mapping) and clients:
        return len(clients)
    for record in results.get("history") or []:
        for key in ("lr", "train_loss"):
            if isinstance(record.get(key), list):
                return len(record[key])
    return 0


def has_validation(history: History) -> bool:
    """Whether any round recorded validation results."""
    return any(isinstance(record.get("val"), Mapping) for record in history)


def client_val_series(history: History, metric: str, clients: int) -> list[list[float]]:
    """Validation ``metric`` of each client over rounds: one list of per-round values per client."""
    series: list[list[float]] = [[] for _ in range(clients)]
    for record in history:
        rows = (record.get("val") or {}).get("clients") or {}
        for client in range(clients):
            series[client].append(as_float((rows.get(str(client)) or {}).get(metric)))
    return series


def balance_series(history: History, metric: str, stat: str) -> list[float]:
    """A balance statistic (``mean``, ``std``, ``min``, ``gap``, ``gini``, ``jain``) per round."""
    values = []
    for record in history:
        stats = ((record.get("val") or {}).get("balance") or {}).get(metric) or {}
        values.append(as_float(stats.get(stat)))
    return values


def slot_series(history: History, key: str, clients: int) -> list[list[float]] | None:
    """A per-client list of the records (``lr``, ``heating_weight``, ``train_loss``) over rounds.

    Returns:
        ``clients`` lists of one value per round, or ``None`` when no round recorded ``key`` (e.g.
        heating weights of a strategy without heating).
    """
    if not any(isinstance(record.get(key), list) for record in history):
        return None
    series: list[list[float]] = [[] for _ in range(clients)]
    for record in history:
        values = record.get(key) or []
        for client in range(clients):
            series[client].append(as_float(values[client]) if client < len(values) else NAN)
    return series


def last_similarity(history: History) -> tuple[int, list[list[float]]] | None:
    """The round and client similarity matrix of the last round that recorded one."""
    for index in range(len(history) - 1, -1, -1):
        matrix = history[index].get("similarity")
        if isinstance(matrix, list) and matrix:
            return int(history[index].get("round", index)), [
                [as_float(v) for v in row] for row in matrix
            ]
    return None


def all_nan(values: Sequence[float]) -> bool:
    """Whether a series holds no finite value (nothing to draw)."""
    return all(not math.isfinite(v) for v in values)
