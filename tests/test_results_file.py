"""``results.json`` written whole, with JSON's missing NaN/inf as null."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fellrec.federation.results_file import RESULTS_FILE, json_safe, write_results


def test_non_finite_numbers_become_null_at_any_depth() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, (2, -math.inf)], "c": {"d": 0.5}, "e": "nan"}
    assert json_safe(value) == {"a": None, "b": [1.0, None, [2, None]], "c": {"d": 0.5}, "e": "nan"}


def test_results_are_written_whole_into_a_new_directory(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "nested"
    path = write_results(directory, {"ndcg@10": math.nan, "users": 3})
    assert path == directory / RESULTS_FILE
    assert path.read_text() == json.dumps({"ndcg@10": None, "users": 3}, indent=2)
    write_results(directory, {"users": 4})  # a second write replaces the file
    assert json.loads(path.read_text()) == {"users": 4}
    assert sorted(p.name for p in directory.iterdir()) == [RESULTS_FILE]  # no partial file left
