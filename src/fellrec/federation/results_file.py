"""``results.json``: the one file a run's results go to, written whole or not at all."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fellrec.run_directory import RESULTS_FILE

__all__ = ["RESULTS_FILE", "json_safe", "write_results"]


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: replace them with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_results(directory: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``directory/results.json`` atomically (a crash leaves the old file).

    Returns:
        The path written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    partial = path.with_suffix(f".tmp{os.getpid()}")
    partial.write_text(json.dumps(json_safe(results), indent=2))
    partial.replace(path)
    return path
