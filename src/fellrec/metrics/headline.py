"""The one line that ends every ``fellrec fit`` and ``fellrec test``: what the test says.

Overall and worst-client test value of the selection metric, each with its bootstrap interval,
against the popularity baseline on the same users, and where ``results.json`` is. Built from the
results dictionary alone (the schema of ``results.json``), so every writer of results can print it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The metric of the headline (the default selection metric).
HEADLINE_METRIC = "ndcg@10"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _interval(intervals: Any, metric: str, client: str | None = None) -> str:
    """`` [low, high]`` of a bootstrap interval under ``ci``, or nothing when there is none."""
    if not isinstance(intervals, Mapping):
        return ""
    scope = intervals.get("overall") if client is None else intervals.get("clients", {}).get(client)
    bounds = scope.get(metric) if isinstance(scope, Mapping) else None
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        return ""
    low, high = (_number(b) for b in bounds)
    return "" if low is None or high is None else f" [{low:.4f}, {high:.4f}]"


def worst_client(results: Mapping[str, Any], metric: str) -> tuple[str, float] | None:
    """The client with the lowest ``metric`` among those evaluated, and its value."""
    clients = results.get("clients")
    if not isinstance(clients, Mapping):
        return None
    values = [
        (value, str(client))
        for client, row in clients.items()
        if isinstance(row, Mapping) and (value := _number(row.get(metric))) is not None
    ]
    if not values:
        return None
    value, client = min(values, key=lambda pair: (pair[0], int(pair[1])))
    return client, value


def _summary(results: Mapping[str, Any], metric: str) -> str | None:
    """``0.2212 [0.19, 0.25], worst client 3 0.1840 [0.12, 0.24]`` of a results dictionary."""
    overall = results.get("overall")
    value = _number(overall.get(metric)) if isinstance(overall, Mapping) else None
    if value is None:
        return None
    intervals = results.get("ci")
    text = f"{value:.4f}{_interval(intervals, metric)}"
    worst = worst_client(results, metric)
    if worst is not None:
        client, low = worst
        text += f", worst client ({client}) {low:.4f}{_interval(intervals, metric, client)}"
    return text


def result_headline(
    results: Mapping[str, Any], results_path: str | None, metric: str = HEADLINE_METRIC
) -> str:
    """One line: the test ``metric`` overall and on the worst client, against popularity.

    Args:
        results: A run's results (``overall``, ``clients``, optional ``ci`` and ``popularity``).
        results_path: Where ``results.json`` was written (``None``: not written).
        metric: The metric shown.

    Returns:
        E.g. ``test ndcg@10 0.2212 [0.1953, 0.2478], worst client (3) 0.1840 [0.1211, 0.2473];
        popularity 0.0900 [0.0712, 0.1101], worst client (1) 0.0512; results in
        runs/quickstart/results.json``.
    """
    model = _summary(results, metric) or "-"
    parts = [f"test {metric} {model}"]
    popularity = results.get("popularity")
    if isinstance(popularity, Mapping):
        baseline = _summary(popularity, metric)
        if baseline is not None:
            parts.append(f"popularity {baseline}")
    where = f"results in {results_path}" if results_path else "results.json not written"
    return "; ".join([*parts, where])


def slice_lines(results: Mapping[str, Any], metric: str = HEADLINE_METRIC) -> list[str]:
    """The test ``metric`` per evaluation slice, against popularity: one line per grouping.

    Args:
        results: A run's results (``slices``, optionally ``popularity.slices``).
        metric: The metric shown.

    Returns:
        E.g. ``test ndcg@10 by popularity: head 0.1500 [0.1300, 0.1700] (312 users; popularity
        0.0900), ...``; empty when the results hold no slices.
    """
    slices = results.get("slices")
    groups = slices.get("groups") if isinstance(slices, Mapping) else None
    if not isinstance(groups, Mapping):
        return []
    popularity = results.get("popularity")
    baseline = popularity.get("slices") if isinstance(popularity, Mapping) else None
    base_groups = baseline.get("groups") if isinstance(baseline, Mapping) else None
    by_grouping: dict[str, list[str]] = {}
    for name, row in groups.items():
        grouping, _, group = str(name).partition("/")
        if not isinstance(row, Mapping):
            continue
        value = _number(row.get(metric))
        text = f"{group} " + ("-" if value is None else f"{value:.4f}")
        bounds = (row.get("ci") or {}).get(metric) if isinstance(row.get("ci"), Mapping) else None
        if value is not None and isinstance(bounds, list | tuple) and len(bounds) == 2:
            text += f" [{bounds[0]:.4f}, {bounds[1]:.4f}]"
        text += f" ({row.get('users', 0)} users"
        other = base_groups.get(name) if isinstance(base_groups, Mapping) else None
        base_value = _number(other.get(metric)) if isinstance(other, Mapping) else None
        text += f"; popularity {base_value:.4f})" if base_value is not None else ")"
        by_grouping.setdefault(grouping, []).append(text)
    return [
        f"test {metric} by {grouping}: {', '.join(parts)}"
        for grouping, parts in by_grouping.items()
    ]
