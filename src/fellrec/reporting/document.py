"""A report as a list of blocks (headings, text, tables, images), rendered to Markdown and HTML.

The HTML is self-contained: inline CSS, images embedded as ``data:image/png;base64`` URIs, no
scripts, fonts or links to fetch, so it opens from an e-mail attachment or an offline disk.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Heading:
    """A section title (``level`` 1-3)."""

    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph of plain text."""

    text: str


@dataclass
class Table:
    """A table of values; numbers are formatted on rendering.

    Attributes:
        columns: Column titles.
        rows: Cells (str, int, float or ``None`` for a missing value).
        best: ``"max"`` or ``"min"``: emphasize each numeric column's best value.
        ranked_rows: Only the first ``ranked_rows`` rows compete for the best value (baselines
            below them are shown for reference); ``None``: all rows.
    """

    columns: list[str]
    rows: list[list[Any]]
    best: str | None = None
    ranked_rows: int | None = None

    def best_cells(self) -> set[tuple[int, int]]:
        """``(row, column)`` of the emphasized cells."""
        if self.best not in ("max", "min"):
            return set()
        ranked = self.rows[: self.ranked_rows] if self.ranked_rows is not None else self.rows
        cells: set[tuple[int, int]] = set()
        for column in range(len(self.columns)):
            values = [(row[column], i) for i, row in enumerate(ranked) if _is_number(row[column])]
            if len(values) < 2:
                continue
            target = (max if self.best == "max" else min)(v for v, _ in values)
            if all(v == target for v, _ in values):
                continue  # a tie of every row marks nothing
            cells.update((i, column) for v, i in values if v == target)
        return cells


@dataclass
class Image:
    """A PNG image with a title; ``name`` is its file stem next to the Markdown report."""

    title: str
    name: str
    png: bytes = field(repr=False)


Block = Heading | Text | Table | Image


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def format_value(value: Any) -> str:
    """A cell as text: 4 decimals for metrics, thousands separators for counts, ``-`` if missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], image_dir: str) -> str:
    """Render blocks as GitHub-flavoured Markdown; images link to ``<image_dir>/<name>.png``."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            best = block.best_cells()
            lines.append("| " + " | ".join(_markdown_cell(c) for c in block.columns) + " |")
            lines.append("|" + "|".join("---" for _ in block.columns) + "|")
            for i, row in enumerate(block.rows):
                cells = [format_value(v) for v in row]
                cells = [f"**{c}**" if (i, j) in best else c for j, c in enumerate(cells)]
                lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
            lines.append("")
        else:
            lines += [f"![{block.title}]({image_dir}/{block.name}.png)", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1.5rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { margin-top: 1.6rem; }
p { color: #424a53; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .65rem; text-align: left; }
th { background: #f0f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { font-weight: 600; }
tr:nth-child(even) td { background: #f8fafc; }
td.best { background: #dafbe1 !important; font-weight: 700; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
figcaption { color: #59636e; font-size: .85rem; }
"""


def _html_cell(value: Any, best: bool) -> str:
    classes = (["num"] if _is_number(value) else []) + (["best"] if best else [])
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attribute}>{html.escape(format_value(value))}</td>"


def to_html(blocks: list[Block], title: str) -> str:
    """Render blocks as one self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            best = block.best_cells()
            parts.append("<table><thead><tr>")
            parts += [f"<th>{html.escape(c)}</th>" for c in block.columns]
            parts.append("</tr></thead><tbody>")
            for i, row in enumerate(block.rows):
                cells = [_html_cell(v, (i, j) in best) for j, v in enumerate(row)]
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(block.title)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.title)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
