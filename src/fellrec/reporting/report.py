"""``fellrec report``: a Markdown and a self-contained HTML report comparing run directories."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fellrec.reporting import plots, tables
from fellrec.reporting.document import Block, Heading, Image, Table, Text, to_html, to_markdown
from fellrec.reporting.runs import default_output, load_run, run_labels

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
#: Folder (next to ``report.md``) of the PNGs the Markdown report links to.
IMAGE_DIR = "report_plots"
#: Per-client test metrics shown across runs.
CLIENT_METRICS = ("ndcg@10", "recall@10")
#: Metrics of the slice tables.
SLICE_METRICS = ("ndcg@10", "recall@10")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _image(title: str, name: str, figure: Any) -> Image:
    return Image(title=title, name=name, png=plots.png_bytes(figure))


def _summary_blocks(runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    # Bold marks the best of several runs on the same data; one run has nothing to be best
    # against, and runs on different data have no common scale.
    apart = tables.different_data(runs)
    ranked = len(runs) > 1 and apart is None
    best = " Best run per column in bold;" if ranked else ""
    blocks: list[Block] = [
        Heading("Test results"),
        Text(
            "Each client is evaluated on its own test users with its selected adapter (its best "
            f"validation round).{best} The popularity baseline (same data and clients) is shown "
            "for reference."
        ),
    ]
    if apart is not None:
        blocks.append(
            Text(
                f"Warning: these runs are not on the same data ({apart}): their numbers are not "
                "comparable across runs, so no best run is marked; read each run against its own "
                "popularity baseline."
            )
        )
    for title, stat, better in tables.SUMMARY_VIEWS:
        blocks.append(Heading(title, 3))
        blocks.append(
            tables.summary_table(runs, stat, better if ranked else None, tables.REPORT_METRICS)
        )
    blocks += [
        Heading("Noise: 95% bootstrap confidence intervals over test users", 3),
        Text(
            "Resampling the evaluated users with replacement shows how much each value could "
            "move with other users; differences inside the intervals are not evidence."
        ),
        tables.interval_table(runs),
    ]
    return blocks


def _slice_blocks(runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    """The test slices (target popularity, history length, the client's unseen items)."""
    found = [(metric, tables.slice_table(runs, metric)) for metric in SLICE_METRICS]
    present = [(metric, table) for metric, table in found if table is not None]
    if not present:
        return []
    blocks: list[Block] = [
        Heading("Test slices: item popularity, history length, the client's unseen items"),
        Text(
            "Each value is the mean over the slice's test users with its 95% bootstrap interval. "
            + (tables.slice_definition_note(runs) or "")
        ),
    ]
    for metric, table in present:
        blocks += [Heading(f"{metric} per slice", 3), table]
    return blocks


def _client_blocks(runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    blocks: list[Block] = [Heading("Per-client test results")]
    ranked = tables.different_data(runs) is None
    for metric in CLIENT_METRICS:
        matrix = tables.client_matrix(runs, metric, ranked)
        blocks += [Heading(f"{metric} per client", 3), matrix]
    for label, results in runs.items():
        blocks += [Heading(f"{label}: every client", 3), tables.client_table(results)]
    return blocks


def _extra_blocks(runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    """Resource accounting and the privacy curve, for the runs that recorded them."""
    blocks: list[Block] = []
    resources = {label: tables.resources_table(r) for label, r in runs.items()}
    present: dict[str, Table] = {k: v for k, v in resources.items() if v is not None}
    if present:
        blocks.append(Heading("Resources"))
        for label, table in present.items():
            blocks += [Heading(label, 3), table]
            note = tables.resources_note(runs[label])
            if note:
                blocks.append(Text(note))
    privacy = tables.privacy_table(runs)
    if privacy is not None:
        curves = {label: c for label, r in runs.items() if (c := tables.privacy_curve(r))}
        blocks += [
            Heading("Privacy"),
            Text("Share of input tokens an honest-but-curious server recovers from h_front."),
            privacy,
            _image("token recovery against k_front", "privacy", plots.privacy_figure(curves)),
        ]
    return blocks


def _plot_blocks(runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    metric = plots.PLOT_METRIC
    blocks: list[Block] = [
        Heading("Plots"),
        _image(
            f"test {metric} per client and run", "comparison", plots.comparison_figure(runs, metric)
        ),
    ]
    for label, results in runs.items():
        figures = plots.run_figures(results, metric)
        if figures:
            blocks.append(Heading(label, 3))
        for name, figure in figures.items():
            caption = f"{label}: {plots.plot_caption(name)}"
            blocks.append(_image(caption, f"{_slug(label)}_{name}", figure))
    return blocks


def report_blocks(
    runs: Mapping[str, Mapping[str, Any]], directories: Mapping[str, str] | None = None
) -> list[Block]:
    """The whole report for runs keyed by label (results dictionaries), as blocks."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        Heading("fellrec report", 1),
        Text(f"{len(runs)} run(s), generated {stamp}."),
        Heading("Runs"),
        tables.runs_table(runs, directories or {}),
        *_summary_blocks(runs),
        *_slice_blocks(runs),
        *_client_blocks(runs),
        *_extra_blocks(runs),
        *_plot_blocks(runs),
    ]


def write_report(
    directories: Sequence[Path | str], output: Path | str | None = None
) -> tuple[Path, Path]:
    """Compare run directories in ``report.md`` (+ ``report_plots/``) and ``report.html``.

    Args:
        directories: Run directories (each with a ``results.json``).
        output: Where to write; default :func:`fellrec.reporting.runs.default_output` (the run
            itself for one run, the runs' common parent directory for several).

    Returns:
        The paths of the Markdown and HTML reports.

    Raises:
        ValueError: If no directory is given or one is not a fellrec run (named in the message).
    """
    if not directories:
        raise ValueError("no run directory given")
    paths = [Path(d) for d in directories]
    loaded = [load_run(path) for path in paths]
    labels = run_labels(paths)
    runs = dict(zip(labels, loaded, strict=True))
    blocks = report_blocks(runs, {label: str(p) for label, p in zip(labels, paths, strict=True)})
    target = Path(output) if output is not None else default_output(paths)
    target.mkdir(parents=True, exist_ok=True)
    image_dir = target / IMAGE_DIR
    image_dir.mkdir(exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            (image_dir / f"{block.name}.png").write_bytes(block.png)
    markdown = target / REPORT_MD
    markdown.write_text(to_markdown(blocks, IMAGE_DIR))
    page = target / REPORT_HTML
    page.write_text(to_html(blocks, f"fellrec report: {', '.join(labels)}"))
    return markdown, page
