"""Matplotlib figures of a run (and of several runs) built from ``results.json`` alone.

Figures are :class:`matplotlib.figure.Figure` objects drawn on the Agg canvas: no pyplot, no global
backend switch, no display needed, so plotting is safe inside a training process and in tests.

Longer than most modules: one small function per figure of a run or a comparison, sharing the
figure, axis and colour helpers; a figure is added here, beside its siblings.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from fellrec.reporting import history as hist

#: Metric of the per-client and balance plots (the default selection metric).
PLOT_METRIC = "ndcg@10"
#: Balance statistics drawn over rounds (method.md section 6).
BALANCE_STATS = ("std", "gap", "gini", "jain")
#: Subdirectory of a run directory that holds its plots.
PLOTS_DIR = "plots"
_STAT_TITLES = {
    "std": "std across clients (lower is fairer)",
    "gap": "best - worst client (lower is fairer)",
    "gini": "Gini coefficient (lower is fairer)",
    "jain": "Jain's index (1 = perfectly even)",
}


def metric_tag(metric: str) -> str:
    """A file-name friendly form of a metric name (``ndcg@10`` -> ``ndcg10``)."""
    return metric.replace("@", "")


def _new_figure(width: float = 7.5, height: float = 4.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attach the Agg canvas: rendering needs no backend selection
    return figure


#: Up to this many rounds, every round gets its own tick.
EVERY_ROUND_TICKS = 12


def _round_axis(axes: Axes, rounds: Sequence[int]) -> None:
    """Integer round ticks, half a round of room at both ends (one round is not a sliver), grid."""
    if rounds and len(rounds) <= EVERY_ROUND_TICKS:
        axes.set_xticks(list(rounds))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        axes.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    axes.grid(alpha=0.3)


#: Marker shapes cycled over clients: lines of clients with identical values (which happens, e.g.
#: under FedAvg) stay visible as overlapping, different open shapes.
CLIENT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
#: The least y range of each balance statistic's plot, so that noise does not look dramatic
#: (lower limit 0, or for Jain's index the range ending at its maximum, 1).
BALANCE_MIN_SPAN = {"std": 0.05, "gap": 0.1, "gini": 0.1, "jain": 0.1}


def client_style(client: int, color: Any) -> dict[str, Any]:
    """Line style of one client: its colour, and an open marker of its own shape."""
    return {
        "color": color,
        "marker": CLIENT_MARKERS[client % len(CLIENT_MARKERS)],
        "mfc": "none",
        "ms": 6,
        "mew": 1.3,
        "lw": 1.2,
    }


def balance_limits(stat: str, values: Sequence[float]) -> tuple[float, float]:
    """The y range of a balance statistic's plot: from its ideal value, at least the least span.

    ``std``, ``gap`` and ``gini`` start at 0 (perfect balance); Jain's index ends at 1 (perfect
    balance). The range grows to show larger values, never shrinks below
    :data:`BALANCE_MIN_SPAN`.
    """
    finite = [v for v in values if math.isfinite(v)]
    span = BALANCE_MIN_SPAN[stat]
    if stat == "jain":
        low = min([1.0 - span, *finite])
        return low - 0.05 * (1.0 - low), 1.0 + 0.02 * (1.0 - low)
    high = max([span, *finite])
    return 0.0, high * 1.05


def _client_colors(count: int) -> list[Any]:
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    return [matplotlib.colormaps["viridis"](i / max(1, count - 1)) for i in range(count)]


def popularity_level(results: Mapping[str, Any], metric: str) -> tuple[float, str] | None:
    """The popularity baseline's overall ``metric`` on validation (test if that is all there is)."""
    popularity = results.get("popularity")
    if not isinstance(popularity, Mapping):
        return None
    for section, label in ((popularity.get("validation"), "validation"), (popularity, "test")):
        overall = section.get("overall") if isinstance(section, Mapping) else None
        value = hist.as_float(overall.get(metric)) if isinstance(overall, Mapping) else math.nan
        if math.isfinite(value):
            return value, f"popularity ({label})"
    return None


def client_metric_figure(results: Mapping[str, Any], metric: str = PLOT_METRIC) -> Figure | None:
    """Validation ``metric`` of every client over rounds, with mean, worst client and popularity.

    Each client's selected round (the adapter it is tested with) is drawn filled.

    Returns:
        The figure, or ``None`` when no round recorded validation results.
    """
    history = results.get("history") or []
    if not hist.has_validation(history):
        return None
    xs = hist.rounds(history)
    clients = hist.num_clients(results)
    selected = results.get("client_best_rounds") or []
    figure = _new_figure()
    axes = figure.add_subplot()
    colors = _client_colors(clients)
    for client, values in enumerate(hist.client_val_series(history, metric, clients)):
        style = client_style(client, colors[client])
        axes.plot(xs, values, alpha=0.85, label=f"client {client}", **style)
        chosen = selected[client] if client < len(selected) else None
        if isinstance(chosen, int) and chosen in xs:
            value = values[xs.index(chosen)]
            axes.plot(
                [chosen], [value], ls="none", marker=style["marker"], ms=9, color=colors[client]
            )
    if any(isinstance(r, int) and r in xs for r in selected):
        # One legend entry for the filled markers of all clients.
        axes.plot([], [], ls="none", marker="o", ms=8, color="dimgray", label="selected round")
    axes.plot(
        xs,
        hist.balance_series(history, metric, "mean"),
        "k--",
        marker="D",
        ms=5,
        lw=2.2,
        label="mean of clients",
    )
    axes.plot(
        xs,
        hist.balance_series(history, metric, "min"),
        color="crimson",
        ls=":",
        marker="v",
        ms=7,
        lw=2.4,
        label="worst client",
    )
    level = popularity_level(results, metric)
    if level is not None:
        axes.axhline(level[0], color="gray", ls="-.", lw=1.5, label=level[1])
    axes.set(xlabel="round", ylabel=f"validation {metric}")
    axes.set_title(f"{results.get('strategy', 'run')}: validation {metric} per client")
    _round_axis(axes, xs)
    figure.legend(loc="outside right upper", fontsize=8, ncol=2 if clients > 12 else 1)
    return figure


def balance_figure(results: Mapping[str, Any], metric: str = PLOT_METRIC) -> Figure | None:
    """Std, gap, Gini and Jain's index of the clients' validation ``metric`` over rounds."""
    history = results.get("history") or []
    if not hist.has_validation(history):
        return None
    xs = hist.rounds(history)
    figure = _new_figure(8.5, 5.2)
    grid = figure.subplots(2, 2, sharex=True)
    for axes, stat in zip(grid.flat, BALANCE_STATS, strict=True):
        values = hist.balance_series(history, metric, stat)
        axes.plot(xs, values, marker="o", color="teal")
        axes.set_ylim(*balance_limits(stat, values))
        axes.set_title(_STAT_TITLES[stat], fontsize=9)
        _round_axis(axes, xs)
    for axes in grid[1]:
        axes.set_xlabel("round")
    figure.suptitle(f"{results.get('strategy', 'run')}: balance of validation {metric}")
    return figure


def similarity_figure(
    matrix: Sequence[Sequence[float]], title: str = "client similarity"
) -> Figure:
    """Heatmap of an ``(N, N)`` client similarity matrix (values annotated for small N).

    The colour scale spans the off-diagonal values only: the diagonal (each client with itself,
    1) would otherwise take the top of the scale and paint the differences that matter alike.
    The diagonal is drawn grey.
    """
    values = np.asarray(matrix, dtype=float)
    n = values.shape[0]
    off_diagonal = ~np.eye(n, dtype=bool)
    others = values[off_diagonal & np.isfinite(values)]
    figure = _new_figure(min(4.0 + 0.35 * n, 9.0), min(3.4 + 0.35 * n, 8.5))
    axes = figure.add_subplot()
    cmap = _colormap("viridis").with_extremes(bad="lightgray")
    shown = np.ma.masked_array(values, mask=~off_diagonal | ~np.isfinite(values))
    low, high = (float(others.min()), float(others.max())) if others.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    image = axes.imshow(shown, cmap=cmap, vmin=low, vmax=high)
    figure.colorbar(image, ax=axes, shrink=0.85, label="similarity (off-diagonal)")
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set(xlabel="client", ylabel="client", title=title)
    if n <= 10:
        middle = (low + high) / 2
        # Similarities are often close to each other: show enough digits to tell them apart.
        spread = high - low
        digits = 2 if spread >= 0.1 else 3 if spread >= 0.01 else 4
        for i, j in np.ndindex(values.shape):
            if math.isfinite(values[i, j]):
                color = "black" if i == j or values[i, j] > middle else "white"
                text = f"{values[i, j]:.{digits}f}"
                axes.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    return figure


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def learning_rate_figure(results: Mapping[str, Any]) -> Figure | None:
    """Each client's learning rate and heating weight over rounds (heating absent: noted)."""
    history = results.get("history") or []
    clients = hist.num_clients(results)
    lrs = hist.slot_series(history, "lr", clients)
    if lrs is None:
        return None
    weights = hist.slot_series(history, "heating_weight", clients)
    xs = hist.rounds(history)
    colors = _client_colors(clients)
    figure = _new_figure(9.0, 4.0)
    left, right = figure.subplots(1, 2, sharex=True)
    for client, values in enumerate(lrs):
        left.plot(xs, values, label=f"client {client}", **client_style(client, colors[client]))
    left.set(xlabel="round", ylabel="learning rate", title="learning rate of the next round")
    # Plain tick labels: a shared "1e-3" offset label would collide with the title.
    left.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    if weights is not None and not all(hist.all_nan(v) for v in weights):
        for client, values in enumerate(weights):
            right.plot(xs, values, label=f"client {client}", **client_style(client, colors[client]))
        right.set(ylim=(0, 1.05))
    else:
        right.text(
            0.5,
            0.5,
            "no heating weights\n(strategy without heating)",
            ha="center",
            va="center",
            transform=right.transAxes,
            color="gray",
        )
    right.set(xlabel="round", ylabel="heating weight", title="heating weight (lr scale)")
    for axes in (left, right):
        _round_axis(axes, xs)
    figure.legend(*left.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    figure.suptitle(f"{results.get('strategy', 'run')}: per-client learning speed")
    return figure


def train_loss_figure(results: Mapping[str, Any]) -> Figure | None:
    """Each client's mean training loss per round (``None`` when no round recorded one)."""
    history = results.get("history") or []
    clients = hist.num_clients(results)
    losses = hist.slot_series(history, "train_loss", clients)
    if losses is None or all(hist.all_nan(v) for v in losses):
        return None
    xs = hist.rounds(history)
    colors = _client_colors(clients)
    figure = _new_figure()
    axes = figure.add_subplot()
    for client, values in enumerate(losses):
        axes.plot(xs, values, label=f"client {client}", **client_style(client, colors[client]))
    axes.set(xlabel="round", ylabel="mean training loss")
    axes.set_title(f"{results.get('strategy', 'run')}: training loss per client")
    _round_axis(axes, xs)
    figure.legend(loc="outside right upper", fontsize=8, ncol=2 if clients > 12 else 1)
    return figure


def plot_caption(name: str, metric: str = PLOT_METRIC) -> str:
    """What a plot of :func:`run_figures` shows, from its file stem."""
    captions = {
        "clients": f"validation {metric} of every client over rounds (filled: the selected "
        "round), with mean, worst client and popularity",
        "balance": f"balance of the clients' validation {metric} over rounds: std, gap, Gini, Jain",
        "learning": "learning rate and heating weight of every client over rounds",
        "train": "mean training loss of every client per round",
        "similarity": "client similarity matrix of the last aggregation",
    }
    return captions.get(name.partition("_")[0], name.replace("_", " "))


def run_figures(results: Mapping[str, Any], metric: str = PLOT_METRIC) -> dict[str, Figure]:
    """All plots of one run, keyed by file stem (absent plots are left out)."""
    tag = metric_tag(metric)
    figures: dict[str, Figure | None] = {
        f"clients_{tag}": client_metric_figure(results, metric),
        f"balance_{tag}": balance_figure(results, metric),
        "learning_rates": learning_rate_figure(results),
        "train_loss": train_loss_figure(results),
    }
    last = hist.last_similarity(results.get("history") or [])
    if last is not None:
        round_index, matrix = last
        figures["similarity"] = similarity_figure(
            matrix, f"{results.get('strategy', 'run')}: client similarity, round {round_index}"
        )
    return {name: figure for name, figure in figures.items() if figure is not None}


def _client_values(results: Mapping[str, Any], metric: str, clients: int) -> list[float]:
    rows = results.get("clients") or {}
    return [hist.as_float((rows.get(str(c)) or {}).get(metric)) for c in range(clients)]


def _client_errors(results: Mapping[str, Any], metric: str, values: Sequence[float]) -> np.ndarray:
    """``(2, N)`` distances from each value down and up to its bootstrap interval (0: none)."""
    intervals = ((results.get("ci") or {}).get("clients")) or {}
    errors = np.zeros((2, len(values)))
    for client, value in enumerate(values):
        bounds = (intervals.get(str(client)) or {}).get(metric)
        if isinstance(bounds, list | tuple) and len(bounds) == 2 and math.isfinite(value):
            low, high = hist.as_float(bounds[0]), hist.as_float(bounds[1])
            if math.isfinite(low) and math.isfinite(high):
                errors[:, client] = (max(0.0, value - low), max(0.0, high - value))
    return errors


#: Colour of the popularity marks on the comparison chart.
POPULARITY_COLOR = "black"


def comparison_figure(runs: Mapping[str, Mapping[str, Any]], metric: str = PLOT_METRIC) -> Figure:
    """Grouped bars of each client's test ``metric``, one colour per run, against popularity.

    Each bar carries its 95% bootstrap interval over the client's test users and a black mark at
    the popularity baseline of that run's own data and clients: runs on different data (another
    dataset, split or partition) are each read against their own baseline.
    """
    clients = max(hist.num_clients(results) for results in runs.values())
    figure = _new_figure(max(7.5, 1.0 + 0.9 * clients), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(runs))
    marked = False
    for index, (label, results) in enumerate(runs.items()):
        values = _client_values(results, metric, clients)
        positions = np.array([c - 0.4 + width * (index + 0.5) for c in range(clients)])
        axes.bar(positions, values, width=width, label=label, color=f"C{index % 10}")
        errors = _client_errors(results, metric, values)
        if errors.any():
            axes.errorbar(
                positions, values, yerr=errors, fmt="none", ecolor="dimgray", capsize=3, lw=1
            )
        popularity = results.get("popularity")
        if isinstance(popularity, Mapping):
            levels = _client_values(popularity, metric, clients)
            axes.hlines(
                levels,
                positions - width / 2,
                positions + width / 2,
                colors=POPULARITY_COLOR,
                lw=2.5,
                label="_nolegend_" if marked else "popularity (each run's own data)",
            )
            marked = True
    axes.set_xticks(range(clients))
    axes.set_xlim(-0.5, clients - 0.5)
    axes.set(
        xlabel="client",
        ylabel=f"test {metric} (95% bootstrap interval)",
        title=f"test {metric} per client and run",
    )
    axes.grid(axis="y", alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    # The runs first, in their order, then the popularity mark.
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("popularity"))
    figure.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside right upper",
        fontsize=8,
    )
    return figure


def privacy_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Token recovery rate of the hidden-state attack against ``k_front``, one line per run."""
    figure = _new_figure(6.5, 3.8)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        points = sorted(
            (hist.as_float(p.get("k_front")), hist.as_float(p.get("token_recovery"))) for p in curve
        )
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set(xlabel="k_front (client blocks before the server)", ylabel="token recovery rate")
    axes.set_ylim(0, 1.02)  # a rate: the whole scale shows how much is exposed
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("privacy: tokens an honest-but-curious server recovers")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure encoded as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def rgb_array(figure: Figure) -> np.ndarray:
    """The rendered figure as an ``(H, W, 3)`` uint8 array (what image loggers take)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_plots(
    results: Mapping[str, Any],
    directory: Path,
    metric: str = PLOT_METRIC,
    stop: Callable[[], bool] | None = None,
) -> list[Path]:
    """Write every plot of a run as ``<directory>/plots/<name>.png``.

    Args:
        results: The run's results.
        directory: The run's directory.
        metric: The metric of the per-client and balance plots.
        stop: Asked before each plot; when it says ``True`` the remaining plots are not drawn.

    Returns:
        The written paths.
    """
    target = Path(directory) / PLOTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in run_figures(results, metric).items():
        if stop is not None and stop():
            break
        path = target / f"{name}.png"
        path.write_bytes(png_bytes(figure))
        paths.append(path)
    return paths
