"""The public catalog: every supported item file, its order, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fellrec.data.catalog import read_catalog, write_catalog_table
from fellrec.data.readers.movielens import ML100K_GENRES
from fellrec.data.schema import DataFormatError


def test_a_csv_catalog_keeps_its_file_order_and_categories(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text('item_id,title,categories\nb,"Bee, the",x|y\na,Ay,\nc,Sea,y\n')
    catalog = read_catalog(path)
    assert catalog.item_ids.tolist() == ["b", "a", "c"]  # file order, not sorted
    assert catalog.titles == ["Bee, the", "Ay", "Sea"]
    assert catalog.categories == [("x", "y"), (), ("y",)]
    assert catalog.indices(["c", "zz", "b"]).tolist() == [2, -1, 0]


def test_a_tabular_catalog_takes_the_readers_column_options(tmp_path: Path) -> None:
    path = tmp_path / "items.tsv"
    path.write_text("movie\tname\tgenre\n7\tSeven\tCrime;Drama\n")
    options = {"item_column": "movie", "title_column": "name", "category_column": "genre"}
    catalog = read_catalog(path, {**options, "category_separator": ";", "user_column": "u"})
    assert catalog.item_ids.tolist() == ["7"] and catalog.titles == ["Seven"]
    assert catalog.categories == [("Crime", "Drama")]


def test_a_parquet_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    frame = pd.DataFrame({"item_id": [3, 1], "title": ["C", "A"], "categories": [["k"], []]})
    frame.to_parquet(path)
    catalog = read_catalog(path)
    assert catalog.item_ids.tolist() == ["3", "1"] and catalog.categories == [("k",), ()]


def test_the_readers_item_files_are_catalogs(tmp_path: Path) -> None:
    recbole = tmp_path / "toy.item"
    recbole.write_text("item_id:token\tmovie_title:token_seq\tgenre:token_seq\n9\tNine\tA B\n")
    assert read_catalog(recbole).categories == [("A", "B")]

    u_item = tmp_path / "u.item"
    flags = ["0"] * len(ML100K_GENRES)
    flags[ML100K_GENRES.index("Comedy")] = "1"
    u_item.write_text("2|Two (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    catalog = read_catalog(u_item)
    assert catalog.titles == ["Two (1995)"] and catalog.categories == [("Comedy",)]

    movies = tmp_path / "movies.dat"
    movies.write_text("5::Five (1999)::Drama|War\n")
    assert read_catalog(movies).categories == [("Drama", "War")]

    meta = tmp_path / "meta_Games.jsonl"
    records = [
        {"parent_asin": "B2", "title": "Game &amp; Co", "categories": ["Toys"], "store": "S"},
        {"parent_asin": "B1", "title": "", "categories": []},  # no title: not an item
    ]
    meta.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    catalog = read_catalog(meta)
    assert catalog.item_ids.tolist() == ["B2"] and catalog.titles == ["Game & Co"]


def test_a_missing_catalog_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv: file not found.*catalog"):
        read_catalog(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.csv", "item_id,title\na,A\nb,B\na,A2\n", r"c\.csv, line 4: duplicate item_id 'a'"),
        ("toy.item", "item_id:token\ttitle:token_seq\n1\tx\n1\ty\n", r"toy\.item, line 3.*'1'"),
        ("meta.json", '{"asin": "X", "title": "t"}\n{"asin": "X", "title": "u"}\n', "line 2"),
        ("c.csv", "item_id,title\n", r"c\.csv: the catalog holds no items"),
        ("c.csv", "item_id,name\na,A\n", r"c\.csv: no column 'title' \(title_column\)"),
        ("toy.item", "item_id:token\tgenre:token\n1\tx\n", r"toy\.item: no 'movie_title or title"),
    ],
)
def test_bad_catalogs_fail_naming_the_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_catalog(path)


def test_a_written_catalog_reads_back_exactly(tmp_path: Path) -> None:
    ids = ["007", "a,b", 'q"t']
    titles = ['Say "hi", then', "", "Two\nlines"]
    categories = [("x|y", "z"), (), ("w",)]  # '|' inside a name: another separator is chosen
    path = tmp_path / "catalog.csv"
    separator = write_catalog_table(path, ids, titles, categories)
    assert separator == ";"
    catalog = read_catalog(path, {"category_separator": separator})
    assert catalog.item_ids.tolist() == ids
    assert catalog.titles == titles and catalog.categories == categories
