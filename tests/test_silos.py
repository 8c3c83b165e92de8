"""Silos: each client's own interactions read against the public catalog, and their bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fellrec.data.catalog import read_catalog
from fellrec.data.pipeline import (
    DatasetSettings,
    PipelineSettings,
    build_federated_data,
    load_federated_data,
)
from fellrec.data.schema import DataFormatError
from fellrec.data.silos import read_silo

CATALOG = "item_id,title,categories\ni1,One,a\ni2,Two,b\ni3,Three,a|b\ni4,Four,\ni5,Five,c\n"
TABULAR = DatasetSettings(format="tabular")


def write_silo(path: Path, rows: list[tuple[str, str, int]]) -> str:
    """A tabular silo file with (user, item, timestamp) rows; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return str(path)


# Silo 0: users a (4 items) and b (3 items); silo 1: user a (another person: ids are local) and c.
SILO_0 = [("a", "i1", 1), ("b", "i2", 2), ("a", "i2", 3), ("b", "i3", 4), ("a", "i3", 5)]
SILO_0 += [("b", "i4", 6), ("a", "i5", 7)]
SILO_1 = [("c", "i5", 1), ("a", "i4", 2), ("c", "i1", 3), ("a", "i2", 4), ("c", "i2", 5)]
SILO_1 += [("a", "i1", 6), ("c", "i3", 7), ("a", "i3", 8)]


@pytest.fixture()
def federation(tmp_path: Path) -> Path:
    """``catalog.csv``, ``s0.csv`` and ``s1.csv`` in a directory."""
    (tmp_path / "catalog.csv").write_text(CATALOG)
    write_silo(tmp_path / "s0.csv", SILO_0)
    write_silo(tmp_path / "s1.csv", SILO_1)
    return tmp_path


def settings(directory: Path, **changes: object) -> PipelineSettings:
    base = PipelineSettings(
        dataset=TABULAR,
        split="leave_one_out",
        valid_fraction=0.1,
        test_fraction=0.1,
        history_length=3,
        max_train_examples=None,
        num_clients=2,
        partition="kmeans",  # not used with silos
        partition_attribute=None,
        dirichlet_concentration=0.5,
        seed=0,
        catalog=str(directory / "catalog.csv"),
        silos=(str(directory / "s0.csv"), str(directory / "s1.csv")),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_silos_become_clients_with_local_users_and_catalog_items(federation: Path) -> None:
    data = build_federated_data(settings(federation))
    assert data.dataset.item_ids.tolist() == ["i1", "i2", "i3", "i4", "i5"]  # the catalog's
    assert data.dataset.user_ids.tolist() == ["a", "b", "a", "c"]  # silo 0's, then silo 1's
    assert data.assignment.tolist() == [0, 0, 1, 1]
    # Silo 0's user a: i1 i2 i3 i5 -> trains on i1 i2, validates on i3, tests on i5.
    assert data.split.train_sequences[0].tolist() == [0, 1]
    valid = dict(zip(data.split.valid.users.tolist(), data.split.valid.targets, strict=True))
    assert valid[0].tolist() == [2] and valid[2].tolist() == [0]  # silo 1's a: i4 i2 | i1 | i3
    # One example per user with two training items (not silo 0's b), silo by silo.
    assert data.examples.users.tolist() == [0, 2, 3]
    assert [r.users for r in data.silos] == [2, 2]


def test_each_format_reads_a_silo_without_its_item_file(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(CATALOG)
    recbole = tmp_path / "recbole"
    recbole.mkdir()
    (recbole / "shop.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\nu\ti2\t5\nu\ti1\t6\n"
    )
    movielens = tmp_path / "movielens"
    movielens.mkdir()
    (movielens / "u.data").write_text("7\ti3\t4\t10\n7\ti1\t5\t11\n")
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(
        json.dumps({"user_id": "r", "parent_asin": "i5", "timestamp": 9000, "rating": 5.0}) + "\n"
    )
    table_dir = tmp_path / "table"
    write_silo(table_dir / "mine.csv", [("t", "i4", 1)])
    cases = [
        (DatasetSettings(format="recbole"), recbole, [1, 0]),
        (DatasetSettings(format="movielens"), movielens, [2, 0]),
        (DatasetSettings(format="amazon"), reviews, [4]),
        (TABULAR, table_dir, [3]),  # a directory with one table
    ]
    parsed = read_catalog(catalog)
    for dataset, path, items in cases:
        silo, report = read_silo(dataset, str(path), parsed, client=0)
        assert silo.items.tolist() == items and silo.num_items == 5
        assert report.unknown_items == 0


def test_unknown_items_are_counted_warned_and_left_out(
    federation: Path, caplog: pytest.LogCaptureFixture
) -> None:
    silo = write_silo(federation / "s1.csv", [*SILO_1, ("c", "zz9", 7), ("a", "zz8", 8)])
    with caplog.at_level(logging.WARNING):
        data = load_federated_data(settings(federation), federation / "cache")
    report = data.silos[1]
    assert report.unknown_items == 2 and report.unknown_examples == ("zz9", "zz8")
    assert report.kept == len(SILO_1)
    assert f"{silo} (client 1): 2 of 10 interactions" in caplog.text
    assert "'zz9', 'zz8'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # also when the prepared data comes from the cache
        load_federated_data(settings(federation), federation / "cache")
    assert "2 of 10 interactions" in caplog.text


def test_unknown_items_can_be_refused_naming_the_file_and_line(federation: Path) -> None:
    write_silo(federation / "s1.csv", [*SILO_1[:2], ("c", "zz9", 3), *SILO_1[2:]])
    with pytest.raises(DataFormatError, match=r"s1\.csv, line 4: item 'zz9' is not in the catalog"):
        build_federated_data(settings(federation, unknown_items="error"))


def test_a_silo_whose_items_are_all_outside_the_catalog_is_named(federation: Path) -> None:
    write_silo(federation / "s1.csv", [("a", "x1", 1), ("a", "x2", 2)])
    with pytest.raises(DataFormatError, match=r"silo .*s1\.csv: none of the items.*'x1', 'x2'"):
        build_federated_data(settings(federation))


def test_a_silo_without_users_is_named(federation: Path) -> None:
    write_silo(federation / "s1.csv", [])
    with pytest.raises(DataFormatError, match=r"s1\.csv: no interactions in the file"):
        build_federated_data(settings(federation))


def test_a_silo_without_training_interactions_is_named(federation: Path) -> None:
    # Silo 1's interactions all happen after the validation cut; silo 0 trains before it.
    write_silo(federation / "s1.csv", [(u, i, t + 100) for u, i, t in SILO_1])
    chosen = settings(federation, split="temporal", temporal_cutoffs=(6, 8))
    with pytest.raises(
        ValueError, match=r"silo .*s1\.csv \(client 1\): no training interactions before "
    ):
        build_federated_data(chosen)


def test_cutoffs_leaving_a_silo_no_validation_users_warn_and_do_not_stop_the_federation(
    federation: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing of silo 1 happens in [6, 9); silo 0 validates users a (i5) and b (i4) there.
    write_silo(federation / "s1.csv", [*SILO_1[:5], ("a", "i1", 9), ("c", "i3", 10)])
    chosen = settings(federation, split="temporal", temporal_cutoffs=(6, 9))
    with caplog.at_level(logging.WARNING):
        data = load_federated_data(chosen, federation / "cache")
    assert [r.valid_users for r in data.silos] == [2, 0]
    assert [r.test_users for r in data.silos] == [0, 2]
    assert "client 1 (silo" in caplog.text and "has no validation users" in caplog.text
    # The same silo served alone (a deployed client) warns too instead of failing.
    alone = load_federated_data(dataclasses.replace(chosen, client=1), federation / "cache")
    assert len(alone.split.valid) == 0 and alone.assignment.tolist() == [1, 1]
    # When no silo has validation users, the simulation cannot select models: an error.
    with pytest.raises(ValueError, match=r"empty split: no silo .*validation.*temporal_cutoffs"):
        build_federated_data(dataclasses.replace(chosen, temporal_cutoffs=(11, 12)))


def test_kcore_per_silo_filters_its_users_and_never_the_catalog(federation: Path) -> None:
    # 2-core of silo 0: i2 and i3 are consumed twice there, the others once.
    chosen = settings(federation, dataset=DatasetSettings("tabular", kcore=2), client=0)
    data = build_federated_data(chosen)
    assert data.dataset.num_items == 5  # the catalog stays whole
    assert sorted(set(data.dataset.items.tolist())) == [1, 2]  # i2 and i3 survive in silo 0
    assert data.silos[0].kept == 4 and data.silos[0].users == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"catalog": None}, r"data\.catalog is required with data\.silos"),
        ({"silos": ()}, r"data\.catalog is used with data\.silos or data\.silo"),
        ({"split": "temporal"}, r"data\.split=temporal with silos needs data\.temporal_cutoffs"),
        ({"num_clients": 3}, r"data\.num_clients=3 but data\.silos lists 2 silos"),
        ({"silos": (), "silo": "s0.csv"}, r"data\.silo needs data\.client"),
        ({"temporal_cutoffs": (5, 5)}, r"data\.temporal_cutoffs must be .* valid_start <"),
        ({"unknown_items": "drop"}, r"data\.unknown_items='drop' is unknown"),
        ({"dataset": DatasetSettings()}, r"data\.silos / data\.silo need files"),
        (
            {"dataset": DatasetSettings("tabular", options={"items": "i.csv"})},
            r"data\.dataset\.options\.items names an item file.*data\.catalog",
        ),
    ],
)
def test_bad_silo_settings_are_named(federation: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_federated_data(settings(federation, **changes))


def test_a_missing_or_duplicated_catalog_is_named(federation: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gone\.csv: file not found"):
        build_federated_data(settings(federation, catalog=str(federation / "gone.csv")))
    (federation / "catalog.csv").write_text(CATALOG + "i2,Again,\n")
    with pytest.raises(DataFormatError, match=r"catalog\.csv, line 7: duplicate item_id 'i2'"):
        build_federated_data(settings(federation))


def test_the_cache_key_follows_the_silo_and_catalog_files(federation: Path) -> None:
    key = settings(federation).cache_key()
    write_silo(federation / "s1.csv", SILO_1[:-1])
    assert settings(federation).cache_key() != key
    key = settings(federation).cache_key()
    (federation / "catalog.csv").write_text(CATALOG + "i6,Six,\n")
    assert settings(federation).cache_key() != key


def test_one_served_silo_reads_only_that_silo(federation: Path) -> None:
    (federation / "s0.csv").unlink()  # client 1 never needs it
    data = build_federated_data(settings(federation, client=1))
    assert data.dataset.user_ids.tolist() == ["a", "c"] and data.assignment.tolist() == [1, 1]
    assert np.array_equal(np.unique(data.examples.users), [0, 1])


def test_a_share_of_users_that_empties_every_silo_is_named(federation: Path) -> None:
    with pytest.raises(ValueError, match=r"empty split: .*data\.eval_user_fraction=1e-09\)"):
        build_federated_data(settings(federation, eval_user_fraction=1e-9))
