"""``fellrec report RUN_DIR [RUN_DIR ...] [--output DIR]``: compare finished runs."""

from __future__ import annotations

import argparse

from fellrec.reporting.report import IMAGE_DIR, REPORT_HTML, REPORT_MD, write_report


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    result = argparse.ArgumentParser(
        prog="fellrec report",
        description=(
            f"Write {REPORT_MD} (with its PNGs in {IMAGE_DIR}/) and a self-contained {REPORT_HTML} "
            "comparing fellrec runs: overall, worst-client, std and Jain's index of Recall/NDCG@5,"
            "10,20, per-client tables, the popularity baseline, resources and privacy when "
            "recorded, and the plots (regenerated from each run's results.json)."
        ),
        allow_abbrev=False,
    )
    result.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    result.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="where to write the report (default: the run directory itself for one run, the "
        "runs' common parent directory for several)",
    )
    return result


def main(args: list[str]) -> None:
    """Run ``fellrec report``.

    Raises:
        ValueError: If a directory is not a fellrec run (the CLI reports it and exits with 2).
    """
    options = parser().parse_args(args)
    markdown, page = write_report(options.runs, options.output)
    print(f"report written to {markdown} and {page}")
