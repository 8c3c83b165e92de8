"""Finding and checking fellrec run directories (a directory holding a valid ``results.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fellrec.run_directory import RESULTS_FILE

#: Keys every ``results.json`` has; a report needs all of them.
REQUIRED_KEYS = ("strategy", "overall", "clients", "balance", "history")


def load_run(directory: Path | str) -> dict[str, Any]:
    """Read and check a run directory's ``results.json``.

    Args:
        directory: A run's log directory.

    Returns:
        The parsed results.

    Raises:
        ValueError: If ``directory`` is not a directory, has no ``results.json``, or the file is not
            a fellrec results object; the message names the directory.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected a fellrec run directory)")
    results_path = path / RESULTS_FILE
    if not results_path.is_file():
        raise ValueError(
            f"{path} is not a fellrec run: it has no {RESULTS_FILE} (a finished `fellrec fit` "
            "writes one into its trainer.default_root_dir)"
        )
    try:
        results = json.loads(results_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{results_path} is not valid JSON: {error}") from None
    if not isinstance(results, dict):
        raise ValueError(f"{results_path} is not a fellrec results object (not a JSON object)")
    missing = [key for key in REQUIRED_KEYS if key not in results]
    if missing:
        raise ValueError(
            f"{results_path} is not a fellrec results file: missing {', '.join(missing)}"
        )
    for key in ("overall", "clients", "balance"):
        if not isinstance(results[key], dict):
            raise ValueError(f"{results_path}: {key!r} must be an object")
    if not isinstance(results["history"], list):
        raise ValueError(f"{results_path}: 'history' must be a list")
    return results


def run_labels(directories: Sequence[Path]) -> list[str]:
    """Short unique names for runs: the directory names, or longer paths where names repeat."""
    resolved = [Path(d).resolve() for d in directories]
    labels = [d.name or str(d) for d in resolved]
    if len(set(labels)) == len(labels):
        return labels
    root = common_parent(resolved)
    labels = [
        str(d.relative_to(root)) if root is not None and d != root else str(d) for d in resolved
    ]
    # The same directory given twice still needs two names.
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def common_parent(directories: Sequence[Path]) -> Path | None:
    """The deepest directory containing all ``directories`` (``None`` if only the root does)."""
    resolved = [Path(d).resolve() for d in directories]
    common = Path(os.path.commonpath([str(d) for d in resolved]))
    return None if common == Path(common.anchor) else common


def default_output(directories: Sequence[Path]) -> Path:
    """Where a report goes without ``--output``.

    One run: its own directory. Several runs: their deepest common directory (``runs/`` for
    ``runs/fellrec runs/fedavg``, which is where ``fellrec compare`` puts its report), or the first
    run's directory when they share no directory below the file system root.
    """
    if len(directories) == 1:
        return Path(directories[0])
    common = common_parent(directories)
    return common if common is not None else Path(directories[0])
