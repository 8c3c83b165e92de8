"""The format registry: one place to add a format, read by the pipeline, the checks and the silos.

The toy format here is added the way ``CONTRIBUTING.md`` ("Add a data format") says, and read
through ``fellrec data stats`` (the fast checks, the config parser, the data module and the cached
pipeline), as a user's config would read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fellrec.cli import main
from fellrec.data.readers import (
    DATA_FORMATS,
    FORMATS,
    DataFormat,
    read_dataset,
    register_format,
    unregister_format,
)
from fellrec.data.schema import DataFormatError, RawDataset
from fellrec.data.silos import silo_settings
from fellrec.data.sources import DatasetSettings, read_raw

#: (user, items in the order the user took them) of the toy file: 24 items, as metrics cut at 20.
SEQUENCES = [
    (f"u{user}", [f"i{(3 * user + step) % 24}" for step in range(8)]) for user in range(16)
]


def read_sequences(path: str) -> RawDataset:
    """A toy format: one ``user: item item ...`` line per user, in the order of time."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        user, colon, items = line.partition(":")
        if not colon:
            raise DataFormatError(f"{path}, line {number}: expected 'user: item item ...'")
        rows += [(user.strip(), item, t) for t, item in enumerate(items.split())]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ids = sorted(set(interactions["item_id"]))
    items = pd.DataFrame(
        {"item_id": ids, "title": [f"Item {i}" for i in ids], "categories": [()] * len(ids)}
    )
    return RawDataset(name="sequences", interactions=interactions, items=items, source=path)


@pytest.fixture
def sequences_format() -> Iterator[str]:
    register_format(DataFormat("sequences", read_sequences))
    try:
        yield "sequences"
    finally:
        unregister_format("sequences")


@pytest.fixture
def sequences_file(tmp_path: Path) -> Path:
    path = tmp_path / "sequences.txt"
    path.write_text("".join(f"{u}: {' '.join(items)}\n" for u, items in SEQUENCES), "utf-8")
    return path


def test_a_registered_format_is_read_by_data_stats(
    sequences_format, sequences_file, tmp_path, capsys
):
    assert sequences_format in FORMATS  # the names every check lists follow the registry
    main(
        [
            *("data", "stats"),
            *("--data.dataset.format", sequences_format),
            *("--data.dataset.path", str(sequences_file)),
            *("--data.num_clients", "2", "--data.partition", "iid"),
            *("--data.history_length", "2", "--data.cache_dir", str(tmp_path / "cache")),
        ]
    )
    out = capsys.readouterr().out
    assert "dataset sequences: 16 users, 24 items, 128 interactions" in out
    assert "popularity baseline (test)" in out


def test_an_unregistered_format_is_gone_from_every_check(sequences_file, tmp_path):
    register_format(DataFormat("sequences", read_sequences))
    unregister_format("sequences")
    assert "sequences" not in FORMATS
    with pytest.raises(ValueError, match=r"data\.dataset\.format='sequences' is unknown"):
        read_raw(DatasetSettings(format="sequences", path=str(sequences_file)), seed=0)


def test_a_name_cannot_be_registered_twice(sequences_format):
    with pytest.raises(ValueError, match="'sequences' is registered already"):
        register_format(DataFormat(sequences_format, read_sequences))
    with pytest.raises(ValueError, match="'movielens' is registered already"):
        register_format(DataFormat("movielens", read_sequences))


def test_the_registry_holds_every_format_the_settings_name():
    assert list(FORMATS) == ["synthetic", "movielens", "recbole", "amazon", "tabular"]
    assert DATA_FORMATS["synthetic"].path_option is None  # generated from data.seed
    assert DATA_FORMATS["amazon"].path_option == "reviews"
    assert DATA_FORMATS["tabular"].item_file_options == ("items",)


def test_the_generated_format_reads_through_the_registry():
    settings = DatasetSettings(format="synthetic", options={"num_users": 30, "num_items": 40})
    raw = read_raw(settings, seed=3)
    assert raw.interactions["user_id"].nunique() == 30
    assert raw.interactions.equals(
        read_dataset("synthetic", num_users=30, num_items=40, seed=3).interactions
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            DatasetSettings(format="synthetic", options={"seed": 1}),
            r"data\.dataset\.options\.seed is set by data\.seed; remove the option",
        ),
        (
            DatasetSettings(format="tabular", path="x.csv", options={"interactions": "y.csv"}),
            r"data\.dataset\.options\.interactions is set by data\.dataset\.path",
        ),
        (
            DatasetSettings(format="synthetic", options={"bogus": 1}),
            r"synthetic reader got unexpected option\(s\) 'bogus'; it accepts: num_users",
        ),
    ],
)
def test_options_the_reader_cannot_take_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        read_raw(settings, seed=0)


def test_silos_need_a_format_that_reads_files(sequences_format):
    with pytest.raises(ValueError, match=r"movielens, recbole, amazon, tabular or sequences\)"):
        silo_settings(DatasetSettings(format="synthetic"), "silo.csv")
    assert silo_settings(DatasetSettings(format=sequences_format), "a.txt").path == "a.txt"
