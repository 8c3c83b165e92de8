"""Tables of one or several runs' results (for reports and for wandb), as columns and rows.

Longer than most modules: one small function per table of ``fellrec report`` and ``fellrec
compare``, which share the accessors of a run's results; a table is added here, beside its
siblings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fellrec.reporting import history as hist
from fellrec.reporting.document import Table, format_value

#: The metrics a comparison shows: Recall and NDCG at 5, 10, 20 (the balance metrics of
#: ``fellrec.metrics.summary``, restated so that reports load without torch).
REPORT_METRICS = tuple(f"{family}@{k}" for family in ("recall", "ndcg") for k in (5, 10, 20))
#: (title, balance statistic or None for the user-weighted overall value, which value is better).
SUMMARY_VIEWS = (
    ("Overall (user-weighted)", None, "max"),
    ("Worst client (min over clients)", "min", "max"),
    ("Std across clients (lower is more balanced)", "std", "min"),
    ("Jain's index across clients (1 = perfectly balanced)", "jain", "max"),
)

Results = Mapping[str, Any]


def _metric_value(summary: Mapping[str, Any], metric: str, stat: str | None) -> Any:
    if stat is None:
        return (summary.get("overall") or {}).get(metric)
    return ((summary.get("balance") or {}).get(metric) or {}).get(stat)


def popularity_baselines(runs: Mapping[str, Results]) -> dict[str, Results]:
    """The runs' popularity baselines, once per distinct value (runs on the same data share one)."""
    baselines: dict[str, Results] = {}
    for label, results in runs.items():
        popularity = results.get("popularity")
        if isinstance(popularity, Mapping) and popularity not in baselines.values():
            baselines[label] = popularity
    if len(baselines) == 1:
        return {"popularity": next(iter(baselines.values()))}
    return {f"popularity ({label})": value for label, value in baselines.items()}


def summary_table(
    runs: Mapping[str, Results], stat: str | None, best: str | None, metrics: tuple[str, ...]
) -> Table:
    """One row per run (then the popularity baseline) of an overall value or balance statistic.

    ``best`` (``"max"``, ``"min"`` or ``None`` for no emphasis) marks each column's best run.
    """
    rows = [[label, *(_metric_value(r, m, stat) for m in metrics)] for label, r in runs.items()]
    rows += [
        [label, *(_metric_value(p, m, stat) for m in metrics)]
        for label, p in popularity_baselines(runs).items()
    ]
    return Table(["run", *metrics], rows, best=best, ranked_rows=len(runs))


#: Metrics whose bootstrap intervals the reports show.
INTERVAL_METRICS = ("ndcg@10", "recall@10")


def format_interval(
    summary: Mapping[str, Any] | None, metric: str, client: str | None = None
) -> str:
    """``"[low, high]"`` of a metric's bootstrap interval (overall, or a client's), or ``-``."""
    intervals = (summary or {}).get("ci")
    if not isinstance(intervals, Mapping):
        return "-"
    scope = (
        intervals.get("overall") if client is None else (intervals.get("clients") or {}).get(client)
    )
    bounds = (scope or {}).get(metric)
    if not bounds:
        return "-"
    return f"[{format_value(bounds[0])}, {format_value(bounds[1])}]"


def interval_table(
    runs: Mapping[str, Results], metrics: tuple[str, ...] = INTERVAL_METRICS
) -> Table:
    """Each run's overall value and bootstrap confidence interval over test users."""
    rows = []
    everything = list(runs.items()) + list(popularity_baselines(runs).items())
    for label, results in everything:
        row: list[Any] = [label, (results.get("overall") or {}).get("users")]
        for metric in metrics:
            row += [_metric_value(results, metric, None), format_interval(results, metric)]
        rows.append(row)
    columns = ["run", "users"]
    for metric in metrics:
        columns += [metric, f"{metric} 95% CI"]
    return Table(columns, rows)


#: Slice names in report order (``fellrec.metrics.slices.SLICE_NAMES``, restated so that reports
#: load without torch).
SLICE_ORDER = (
    "popularity/head",
    "popularity/torso",
    "popularity/tail",
    "popularity/new",
    "history/short",
    "history/medium",
    "history/long",
    "client_items/seen",
    "client_items/unseen",
)


def slice_cell(slices: Any, name: str, metric: str) -> str:
    """``"0.1234 [0.1000, 0.1500]"`` of a slice's value and interval; ``-`` when it has none."""
    groups = slices.get("groups") if isinstance(slices, Mapping) else None
    row = groups.get(name) if isinstance(groups, Mapping) else None
    if not isinstance(row, Mapping) or metric not in row:
        return "-"
    bounds = (row.get("ci") or {}).get(metric)
    interval = f" [{format_value(bounds[0])}, {format_value(bounds[1])}]" if bounds else ""
    return f"{format_value(row[metric])}{interval}"


def slice_table(runs: Mapping[str, Results], metric: str) -> Table | None:
    """Test ``metric`` with its 95% interval on every slice (rows) for every run (columns).

    The popularity baseline(s) come last; ``users`` is the first run's count per slice (the
    same for runs on the same data). None when no run recorded slices.
    """
    everything = {
        label: r.get("slices")
        for label, r in list(runs.items()) + list(popularity_baselines(runs).items())
    }
    present = {label: s for label, s in everything.items() if isinstance(s, Mapping)}
    if not present:
        return None
    first = next(iter(present.values()))
    rows = []
    for name in SLICE_ORDER:
        users = ((first.get("groups") or {}).get(name) or {}).get("users")
        rows.append([name, users, *(slice_cell(s, name, metric) for s in present.values())])
    return Table(["slice", "users", *present], rows)


def slice_definition_note(runs: Mapping[str, Results]) -> str | None:
    """The slices' cut points (from the first run that recorded them), as one paragraph."""
    for results in runs.values():
        slices = results.get("slices")
        definition = slices.get("definition") if isinstance(slices, Mapping) else None
        if not isinstance(definition, Mapping):
            continue
        popularity = _section(definition, "popularity")
        history = _section(definition, "history")
        items = _section(popularity, "items")
        counts = ", ".join(f"{k} {v}" for k, v in items.items())
        return (
            f"Popularity: {popularity.get('rule')}; head >= {popularity.get('head_min_count')} "
            f"training interactions, torso >= {popularity.get('torso_min_count')}, tail >= 1, "
            f"new 0 (items: {counts}). History: {history.get('rule')}; medium >= "
            f"{history.get('medium_min_length')}, long >= {history.get('long_min_length')}. "
            "Client items: whether the target occurs in the training data of the user's own "
            "client. Under leave-one-out each grouping partitions the test users; with several "
            "targets per user (temporal split) a user counts in every slice of one of its targets."
        )
    return None


def _section(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``mapping[key]`` when it is a mapping, else an empty one."""
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


#: Classic baselines: their runs record the config's backbone, which they do not use.
CLASSIC_BASELINES = ("bpr", "sasrec")


def data_description(results: Results) -> dict[str, str]:
    """What data a run was on and with which model, from its recorded config.

    Returns:
        ``dataset`` (format and file or size), ``split`` (split, clients, partition, seed) and
        ``backbone`` (``-`` for the classic baselines); ``-`` where the config does not say.
    """
    config = _section(results, "config")
    data = _section(config, "data")
    dataset = _section(data, "dataset")
    options = _section(dataset, "options")
    fmt = dataset.get("format")
    if fmt == "synthetic":
        sizes = [
            f"{options[k]} {k.removeprefix('num_')}"
            for k in ("num_users", "num_items")
            if k in options
        ]
        name = f"synthetic ({', '.join(sizes)})" if sizes else "synthetic"
    elif fmt:
        where = dataset.get("path") or options.get("name") or ""
        name = f"{fmt}: {Path(str(where)).name}" if where else str(fmt)
    else:
        name = "-"
    if dataset.get("kcore"):
        name += f", {dataset['kcore']}-core"
    if dataset.get("min_rating") is not None:
        name += f", rating >= {dataset['min_rating']}"
    split = "-"
    if data.get("split"):
        split = f"{data['split']}, {data.get('num_clients', '?')} clients"
        split += f" ({data.get('partition', '?')}, seed {data.get('seed', '?')})"
    backbone = str(_section(config, "model").get("backbone") or "-")
    if results.get("strategy") in CLASSIC_BASELINES:
        backbone = "-"
    return {"dataset": name, "split": split, "backbone": backbone}


def different_data(runs: Mapping[str, Results]) -> str | None:
    """Why the runs' test numbers cannot be compared, or ``None`` when they can.

    Runs are on the same data when their popularity baselines agree (the same test users, targets
    and clients give the same baseline) and their recorded dataset and split agree.
    """
    if len(runs) < 2:
        return None
    reasons = []
    baselines = [
        {k: p.get(k) for k in ("overall", "clients", "balance")}
        for r in runs.values()
        if isinstance(p := r.get("popularity"), Mapping)
    ]
    if len(baselines) > 1 and any(b != baselines[0] for b in baselines[1:]):
        reasons.append("their popularity baselines differ")
    described = [data_description(r) for r in runs.values()]
    for key in ("dataset", "split"):
        values = {d[key] for d in described if d[key] != "-"}
        if len(values) > 1:
            reasons.append(f"{key}s differ ({'; '.join(sorted(values))})")
    return "; ".join(reasons) or None


def runs_table(runs: Mapping[str, Results], directories: Mapping[str, str]) -> Table:
    """What each run is: strategy and settings, data, split, backbone, rounds, directory."""
    rows = []
    for label, results in runs.items():
        settings = results.get("strategy_settings") or {}
        described = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "name")
        data = data_description(results)
        rows.append(
            [
                label,
                results.get("strategy"),
                described or "-",
                data["dataset"],
                data["split"],
                data["backbone"],
                hist.num_clients(results),
                results.get("rounds_run"),
                results.get("best_round"),
                directories.get(label, ""),
            ]
        )
    columns = ["run", "strategy", "settings", "dataset", "split", "backbone", "clients"]
    columns += ["rounds", "best round", "directory"]
    return Table(columns, rows)


def client_matrix(runs: Mapping[str, Results], metric: str, ranked: bool = True) -> Table:
    """Test ``metric`` of every client (columns) for every run (rows), best per client marked.

    ``ranked`` False (runs on different data) marks no best.
    """
    clients = max(hist.num_clients(r) for r in runs.values())
    rows = []
    for label, results in list(runs.items()) + list(popularity_baselines(runs).items()):
        per_client = results.get("clients") or {}
        rows.append([label, *((per_client.get(str(c)) or {}).get(metric) for c in range(clients))])
    columns = ["run", *(f"client {c}" for c in range(clients))]
    return Table(columns, rows, best="max" if ranked else None, ranked_rows=len(runs))


def client_table(results: Results, metrics: tuple[str, ...] = REPORT_METRICS) -> Table:
    """One run's test results per client: users, metrics and the client's selected round."""
    best_rounds = results.get("client_best_rounds") or []
    metric = INTERVAL_METRICS[0]
    rows = []
    for client, row in sorted((results.get("clients") or {}).items(), key=lambda kv: int(kv[0])):
        index = int(client)
        selected = best_rounds[index] if index < len(best_rounds) else None
        interval = format_interval(results, metric, client)
        rows.append([client, row.get("users"), *(row.get(m) for m in metrics), interval, selected])
    return Table(["client", "users", *metrics, f"{metric} 95% CI", "selected round"], rows)


def round_client_table(record: Mapping[str, Any], clients: int) -> Table:
    """One round's per-client view: validation users and metrics, train loss, lr, heating weight."""
    val_rows = (record.get("val") or {}).get("clients") or {}
    metrics: list[str] = []
    for row in val_rows.values():
        metrics += [key for key in row if key != "users" and key not in metrics]

    def slot(key: str, client: int) -> Any:
        values = record.get(key)
        return values[client] if isinstance(values, list) and client < len(values) else None

    rows = []
    for client in range(clients):
        row = val_rows.get(str(client)) or {}
        rows.append(
            [
                client,
                row.get("users"),
                *(row.get(m) for m in metrics),
                slot("train_loss", client),
                slot("lr", client),
                slot("heating_weight", client),
            ]
        )
    columns = ["client", "users", *metrics, "train_loss", "lr", "heating_weight"]
    return Table(columns, rows)


def evaluation_table(results: Results) -> Table:
    """Test metrics per client followed by an ``overall`` (user-weighted) row."""
    metrics: list[str] = [k for k in (results.get("overall") or {}) if k != "users"]
    rows = []
    for client, row in sorted((results.get("clients") or {}).items(), key=lambda kv: int(kv[0])):
        rows.append([client, row.get("users"), *(row.get(m) for m in metrics)])
    overall = results.get("overall") or {}
    rows.append(["overall", overall.get("users"), *(overall.get(m) for m in metrics)])
    return Table(["client", "users", *metrics], rows)


def resources_table(results: Results) -> Table | None:
    """The run's resource accounting (``results["resources"]["table"]``), if present."""
    resources = results.get("resources")
    rows = resources.get("table") if isinstance(resources, Mapping) else None
    if not isinstance(rows, list) or not rows:
        return None
    columns: list[str] = []
    for row in rows:
        if isinstance(row, Mapping):
            columns += [str(key) for key in row if str(key) not in columns]
    body = [[row.get(c) for c in columns] for row in rows if isinstance(row, Mapping)]
    return Table(columns, body)


#: Settings of the resource accounting quoted above its table (when recorded).
RESOURCE_SETTINGS = ("split", "k_front", "k_back", "batch_size", "seq_len", "num_clients")


def resources_note(results: Results) -> str | None:
    """One line on the resource accounting: its settings and what was measured, if recorded."""
    resources = results.get("resources")
    if not isinstance(resources, Mapping):
        return None
    parts = [f"{k}={format_value(resources[k])}" for k in RESOURCE_SETTINGS if k in resources]
    measured = resources.get("measured")
    if isinstance(measured, Mapping) and measured:
        values = ", ".join(f"{k}={format_value(v)}" for k, v in measured.items())
        parts.append(f"measured: {values}")
    return "; ".join(parts) or None


def privacy_curve(results: Results) -> list[Mapping[str, Any]] | None:
    """The token-recovery curve (``results["privacy"]["curve"]``), if present."""
    privacy = results.get("privacy")
    curve = privacy.get("curve") if isinstance(privacy, Mapping) else None
    if not isinstance(curve, list) or not curve:
        return None
    return [point for point in curve if isinstance(point, Mapping)]


def privacy_table(runs: Mapping[str, Results]) -> Table | None:
    """Token recovery rate per ``k_front`` (columns) for every run that has a privacy curve."""
    curves = {label: c for label, r in runs.items() if (c := privacy_curve(r)) is not None}
    if not curves:
        return None
    ks = sorted({p.get("k_front") for c in curves.values() for p in c}, key=hist.as_float)
    rows = []
    for label, curve in curves.items():
        by_k = {p.get("k_front"): p.get("token_recovery") for p in curve}
        rows.append([label, *(by_k.get(k) for k in ks)])
    return Table(["run", *(f"k_front={k}" for k in ks)], rows, best="min")
