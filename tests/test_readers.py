"""Dataset readers on small files written in each real format."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fellrec.data.readers import (
    DATA_FORMATS,
    read_amazon,
    read_dataset,
    read_movielens,
    read_recbole,
    read_tabular,
)
from fellrec.data.schema import DataFormatError, index_dataset

# --------------------------------------------------------------------------- helpers


def interactions(
    rows: list[tuple[str, str, int]], ratings: list[float] | None = None
) -> pd.DataFrame:
    data: dict[str, Any] = {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": np.array([r[2] for r in rows], dtype=np.int64),
    }
    if ratings is not None:
        data["rating"] = np.array(ratings, dtype=np.float64)
    return pd.DataFrame(data)


def items(rows: list[tuple[str, str, tuple[str, ...]]], **extra: list[str]) -> pd.DataFrame:
    data: dict[str, Any] = {
        "item_id": pd.Series([r[0] for r in rows], dtype=str),
        "title": pd.Series([r[1] for r in rows], dtype=str),
        "categories": pd.Series([r[2] for r in rows], dtype=object),
    }
    for name, values in extra.items():
        data[name] = pd.Series(values, dtype=str)
    return pd.DataFrame(data)


def users(columns: list[str], rows: list[tuple[str, ...]]) -> pd.DataFrame:
    return pd.DataFrame(
        {name: pd.Series([r[i] for r in rows], dtype=str) for i, name in enumerate(columns)}
    )


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, records: list[Any], compress: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def raises(error: type[Exception], *fragments: str) -> Any:
    """pytest.raises requiring every fragment, literally, in the message."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# --------------------------------------------------------------------------- MovieLens

ML100K_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n"
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    write(tmp_path / "u.data", "196\t1\t3\t881250949\n186\t2\t5\t891717742\n22\t3\t1\t878887116\n")
    write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    write(
        tmp_path / "u.user",
        "196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|40206\n",
    )
    return tmp_path


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    write(
        tmp_path / "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
    )
    movies = "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    movies += "661::Misérables, Les (1995)::Drama|Musical\n"
    movies += "3::Grumpier Old Men (1995)::(no genres listed)\n"
    write(tmp_path / "movies.dat", movies, "latin-1")
    write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return tmp_path


def test_movielens_100k_frames(ml100k: Path) -> None:
    raw = read_movielens(ml100k)
    assert raw.name == "ml-100k"
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [("196", "1", 881250949), ("186", "2", 891717742), ("22", "3", 878887116)],
            [3.0, 5.0, 1.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items,
        items(
            [
                ("1", "Toy Story (1995)", ("Animation", "Children's", "Comedy")),
                ("2", "Misérables, Les (1995)", ("Drama", "Musical")),
                ("3", "unknown", ("unknown",)),
            ]
        ),
    )
    assert raw.users is not None
    pd.testing.assert_frame_equal(
        raw.users,
        users(
            ["user_id", "age", "gender", "occupation", "zip_code"],
            [
                ("196", "49", "M", "writer", "55105"),
                ("186", "39", "F", "executive", "00000"),
                ("22", "25", "M", "writer", "40206"),
            ],
        ),
    )
    indexed = index_dataset(raw)
    assert (indexed.num_users, indexed.num_items, indexed.num_interactions) == (3, 3, 3)


def test_movielens_1m_frames_latin1(ml1m: Path) -> None:
    raw = read_movielens(str(ml1m), variant="ml-1m")
    assert raw.name == "ml-1m"
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [("1", "1193", 978300760), ("1", "661", 978302109), ("2", "1193", 978298413)],
            [5.0, 3.0, 4.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items,
        items(
            [
                ("1193", "One Flew Over the Cuckoo's Nest (1975)", ("Drama",)),
                ("661", "Misérables, Les (1995)", ("Drama", "Musical")),
                ("3", "Grumpier Old Men (1995)", ()),
            ]
        ),
    )
    assert raw.users is not None
    pd.testing.assert_frame_equal(
        raw.users,
        users(
            ["user_id", "age", "gender", "occupation", "zip_code"],
            [("1", "1", "F", "K-12 student", "48067"), ("2", "56", "M", "self-employed", "70072")],
        ),
    )


def test_movielens_users_optional(ml1m: Path) -> None:
    (ml1m / "users.dat").unlink()
    assert read_movielens(ml1m).users is None


def test_movielens_malformed_row_names_file_and_line(ml1m: Path) -> None:
    write(ml1m / "ratings.dat", "1::1193::5::978300760\n\n1::661::3\n")
    with raises(DataFormatError, "ratings.dat, line 3", "expected 4 fields"):
        read_movielens(ml1m)


def test_movielens_bad_timestamp_names_line(ml100k: Path) -> None:
    write(ml100k / "u.data", "196\t1\t3\t881250949\n186\t2\t5\tsoon\n")
    with raises(DataFormatError, "u.data, line 2", "timestamp", "'soon'"):
        read_movielens(ml100k)


def test_movielens_bad_genre_flag(ml100k: Path) -> None:
    write(
        ml100k / "u.item",
        ML100K_ITEM.replace("|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0", "|x" + "|0" * 18),
        "latin-1",
    )
    with raises(DataFormatError, "u.item, line 3", "'unknown'", "'x'"):
        read_movielens(ml100k)


def test_movielens_missing_files(tmp_path: Path, ml100k: Path) -> None:
    with raises(FileNotFoundError, str(tmp_path / "nowhere"), "MovieLens"):
        read_movielens(tmp_path / "nowhere")
    (ml100k / "u.item").unlink()
    with raises(FileNotFoundError, str(ml100k / "u.item"), "ml-100k movies"):
        read_movielens(ml100k)


def test_movielens_detection_errors(tmp_path: Path) -> None:
    write(tmp_path / "README", "")
    with raises(FileNotFoundError, "u.data (ml-100k)", "ratings.dat (ml-1m)", "present: README"):
        read_movielens(tmp_path)
    write(tmp_path / "u.data", "")
    write(tmp_path / "ratings.dat", "")
    with raises(DataFormatError, "contains both", "variant="):
        read_movielens(tmp_path)
    with raises(ValueError, "'ml-25m'", "ml-100k, ml-1m"):
        read_movielens(tmp_path, variant="ml-25m")


# --------------------------------------------------------------------------- RecBole


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    write(
        tmp_path / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t4\t881250949\nu1\ti2\t2.5\t881250950.0\nu2\ti1\t5\t881250951\n",
    )
    write(
        tmp_path / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "i1\tToy Story\t1995\tAnimation Children's Comedy\ni2\tMisérables, Les\t1995\t\n",
    )
    write(
        tmp_path / "toy.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "u1\t24\tM\ttechnician\t85711\nu2\t53\tF\tother\t94043\n",
    )
    return tmp_path


def test_recbole_frames(recbole_dir: Path) -> None:
    raw = read_recbole(recbole_dir)
    assert raw.name == "toy"
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [("u1", "i1", 881250949), ("u1", "i2", 881250950), ("u2", "i1", 881250951)],
            [4.0, 2.5, 5.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items,
        items(
            [
                ("i1", "Toy Story", ("Animation", "Children's", "Comedy")),
                ("i2", "Misérables, Les", ()),
            ]
        ),
    )
    assert raw.users is not None
    pd.testing.assert_frame_equal(
        raw.users,
        users(
            ["user_id", "age", "gender", "occupation", "zip_code"],
            [("u1", "24", "M", "technician", "85711"), ("u2", "53", "F", "other", "94043")],
        ),
    )


def test_recbole_other_field_names(tmp_path: Path) -> None:
    write(tmp_path / "shop.inter", "timestamp:float\titem_id:token\tuser_id:token\n5\tA\tx\n")
    write(
        tmp_path / "shop.item",
        "item_id:token\ttitle:token_seq\tcategory:token\tbrand:token\nA\tRed Shoe\tShoes\tAcme\n",
    )
    raw = read_recbole(tmp_path, name="shop")
    pd.testing.assert_frame_equal(raw.interactions, interactions([("x", "A", 5)]))
    pd.testing.assert_frame_equal(raw.items, items([("A", "Red Shoe", ("Shoes",))], brand=["Acme"]))
    assert raw.users is None


def test_recbole_title_falls_back_to_id(tmp_path: Path) -> None:
    write(tmp_path / "a.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t7\t1\n")
    write(tmp_path / "a.item", "item_id:token\tgenre:token_seq\n7\tJazz Blues\n")
    pd.testing.assert_frame_equal(
        read_recbole(tmp_path).items, items([("7", "7", ("Jazz", "Blues"))])
    )


def test_recbole_missing_timestamp_names_file(recbole_dir: Path) -> None:
    write(recbole_dir / "toy.inter", "user_id:token\titem_id:token\trating:float\nu1\ti1\t4\n")
    with raises(
        DataFormatError,
        "toy.inter",
        "'timestamp'",
        "fields: user_id:token, item_id:token, rating:float",
    ):
        read_recbole(recbole_dir)


def test_recbole_malformed_row_and_header(recbole_dir: Path) -> None:
    path = recbole_dir / "toy.inter"
    write(path, "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n")
    with raises(DataFormatError, "toy.inter, line 3", "expected 3 fields"):
        read_recbole(recbole_dir)
    write(path, "user_id\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    with raises(DataFormatError, "toy.inter, line 1", "'user_id'", "name:type"):
        read_recbole(recbole_dir)


def test_recbole_duplicate_item(recbole_dir: Path) -> None:
    write(recbole_dir / "toy.item", "item_id:token\ttitle:token_seq\ni1\tA\ni1\tB\n")
    with raises(DataFormatError, "toy.item, line 3", "duplicate item_id 'i1'"):
        read_recbole(recbole_dir)


def test_recbole_name_detection_and_missing_files(recbole_dir: Path) -> None:
    write(recbole_dir / "other.inter", "user_id:token\titem_id:token\ttimestamp:float\n")
    with raises(DataFormatError, "other, toy", "name="):
        read_recbole(recbole_dir)
    with raises(FileNotFoundError, "other.item", "item features"):
        read_recbole(recbole_dir, name="other")
    empty = recbole_dir / "empty"
    empty.mkdir()
    with raises(FileNotFoundError, "no .inter file"):
        read_recbole(empty)


# --------------------------------------------------------------------------- Amazon

REVIEWS_2018 = [
    {
        "overall": 5.0,
        "verified": True,
        "reviewTime": "10 17, 2015",
        "reviewerID": "A1",
        "asin": "B001",
        "reviewerName": "Ann",
        "reviewText": "Great",
        "summary": "Yes",
        "unixReviewTime": 1445040000,
    },
    {"overall": 3.0, "reviewerID": "A2", "asin": "B002", "unixReviewTime": 1445040100, "vote": "2"},
    {"overall": 4.0, "reviewerID": "A1", "asin": "B003", "unixReviewTime": 1445040200},
]
META_2018 = [
    {
        "category": ["Video Games", "PC", "Games"],
        "title": "Mario &amp; Sonic  at the Games",
        "brand": "Sega",
        "asin": "B001",
        "also_buy": [],
        "main_cat": "Video Games",
        "price": "",
    },
    {"category": [], "title": "", "brand": "", "asin": "B002"},  # no title: unusable
    {"asin": "B009", "title": "Never reviewed", "category": ["Toys"]},
    {"category": ["Video Games"], "title": "Duplicate, ignored", "asin": "B001"},
]


def test_amazon_2018_gzip(tmp_path: Path) -> None:
    reviews = write_jsonl(tmp_path / "Video_Games_5.json.gz", REVIEWS_2018, compress=True)
    meta = write_jsonl(tmp_path / "meta_Video_Games.json.gz", META_2018, compress=True)
    raw = read_amazon(reviews, meta)
    assert raw.name == "Video_Games_5"
    assert raw.users is None
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [("A1", "B001", 1445040000), ("A2", "B002", 1445040100), ("A1", "B003", 1445040200)],
            [5.0, 3.0, 4.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items,
        items(
            [("B001", "Mario & Sonic at the Games", ("Video Games", "PC", "Games"))], brand=["Sega"]
        ),
    )
    indexed = index_dataset(raw)  # drops the interactions with items lacking metadata
    assert indexed.num_interactions == 1


def test_amazon_without_meta_uses_ids(tmp_path: Path) -> None:
    raw = read_amazon(write_jsonl(tmp_path / "Beauty_5.json", REVIEWS_2018))
    assert raw.name == "Beauty_5"
    pd.testing.assert_frame_equal(
        raw.items, items([("B001", "B001", ()), ("B002", "B002", ()), ("B003", "B003", ())])
    )


def test_amazon_python_literal_lines(tmp_path: Path) -> None:
    # The 2014 dumps write metadata as Python dict literals, with category paths.
    reviews = write_jsonl(tmp_path / "reviews_Toys_5.json", REVIEWS_2018[:1])
    meta = write_jsonl(
        tmp_path / "meta_Toys.json",
        [
            "{'asin': 'B001', 'title': 'Tutu &quot;Zebra&quot;', 'price': 3.17, "
            "'salesRank': {'Toys & Games': 211836}, "
            "'categories': [['Toys & Games', 'Dance'], ['Toys & Games', 'Costumes']]}"
        ],
    )
    raw = read_amazon(reviews, meta)
    pd.testing.assert_frame_equal(
        raw.items,
        items([("B001", 'Tutu "Zebra"', ("Toys & Games", "Dance", "Costumes"))], brand=[""]),
    )


def test_amazon_2023(tmp_path: Path) -> None:
    reviews = write_jsonl(
        tmp_path / "Video_Games.jsonl.gz",
        [
            {
                "rating": 5.0,
                "title": "Fun",
                "text": "ok",
                "images": [],
                "asin": "B01V1",
                "parent_asin": "B01P",
                "user_id": "AGCI7",
                "timestamp": 1556614204102,
                "helpful_vote": 0,
                "verified_purchase": True,
            },
            {
                "rating": 2.0,
                "asin": "B01V2",
                "parent_asin": "B01P",
                "user_id": "AHX",
                "timestamp": 1556614205999,
            },
            {
                "rating": 1.0,
                "asin": "B02",
                "parent_asin": "B02",
                "user_id": "AHX",
                "timestamp": 1600000000000,
            },
        ],
        compress=True,
    )
    meta = write_jsonl(
        tmp_path / "meta_Video_Games.jsonl",
        [
            {
                "main_category": "Video Games",
                "title": "Controller",
                "average_rating": 4.5,
                "categories": ["Video Games", "PC", "Accessories"],
                "store": "Logi",
                "parent_asin": "B01P",
                "details": {},
            },
            {
                "main_category": "All Electronics",
                "title": "Cable &amp; Adapter",
                "categories": [],
                "store": None,
                "parent_asin": "B02",
            },
        ],
    )
    raw = read_amazon(reviews, meta)
    assert raw.name == "Video_Games"
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [
                ("AGCI7", "B01P", 1556614204),
                ("AHX", "B01P", 1556614205),
                ("AHX", "B02", 1600000000),
            ],
            [5.0, 2.0, 1.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items,
        items(
            [
                ("B01P", "Controller", ("Video Games", "PC", "Accessories")),
                ("B02", "Cable & Adapter", ("All Electronics",)),
            ],
            brand=["Logi", ""],
        ),
    )


def test_amazon_errors(tmp_path: Path) -> None:
    with raises(FileNotFoundError, "missing.json", "Amazon reviews"):
        read_amazon(tmp_path / "missing.json")
    bad = write_jsonl(tmp_path / "bad.json", [REVIEWS_2018[0], '{"reviewerID": "A2", "asin": '])
    with raises(DataFormatError, "bad.json, line 2", "neither JSON"):
        read_amazon(bad)
    lacking = write_jsonl(
        tmp_path / "lacking.json", [REVIEWS_2018[0], {"reviewerID": "A", "asin": "B"}]
    )
    with raises(DataFormatError, "lacking.json, line 2", "lacks 'unixReviewTime'"):
        read_amazon(lacking)
    unknown = write_jsonl(tmp_path / "unknown.json", [{"user": "u", "item": "i"}])
    with raises(DataFormatError, "unknown.json, line 1", "reviewerID", "found item, user"):
        read_amazon(unknown)
    reviews = write_jsonl(tmp_path / "r.json", REVIEWS_2018)
    meta_2023 = write_jsonl(tmp_path / "m.json", [{"parent_asin": "B001", "title": "x"}])
    with raises(DataFormatError, "m.json", "2023 format", "2018 format"):
        read_amazon(reviews, meta_2023)
    other_meta = write_jsonl(tmp_path / "o.json", [{"asin": "Z", "title": "x"}])
    with raises(DataFormatError, "o.json", "no reviewed item"):
        read_amazon(reviews, other_meta)


# --------------------------------------------------------------------------- tabular


@pytest.fixture
def csv_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    inter = write(
        tmp_path / "ratings.csv",
        "uid,iid,when,stars\n"
        "u1,NA,2024-01-31T12:00:00Z,4\n"
        "u2,i2,2024-01-31,3.5\n"
        "\n"
        "u1,i2,2024-02-01 00:00:01+01:00,5\n",
    )
    item_file = write(
        tmp_path / "items.csv",
        'iid,name,genres\nNA,"Heat, the sequel",Action|Crime\ni2,Up,\n',
    )
    user_file = write(tmp_path / "users.csv", "uid,age,city\nu1,30,Oslo\nu2,,Rome\n")
    return inter, item_file, user_file


def test_tabular_csv_with_iso_dates(csv_files: tuple[Path, Path, Path]) -> None:
    inter, item_file, user_file = csv_files
    raw = read_tabular(
        inter,
        items=item_file,
        users=user_file,
        user_column="uid",
        item_column="iid",
        time_column="when",
        title_column="name",
        category_column="genres",
        rating_column="stars",
    )
    assert raw.name == "ratings"
    pd.testing.assert_frame_equal(
        raw.interactions,
        interactions(
            [("u1", "NA", 1706702400), ("u2", "i2", 1706659200), ("u1", "i2", 1706742001)],
            [4.0, 3.5, 5.0],
        ),
    )
    pd.testing.assert_frame_equal(
        raw.items, items([("NA", "Heat, the sequel", ("Action", "Crime")), ("i2", "Up", ())])
    )
    assert raw.users is not None
    pd.testing.assert_frame_equal(
        raw.users, users(["user_id", "age", "city"], [("u1", "30", "Oslo"), ("u2", "", "Rome")])
    )


def test_tabular_without_items_uses_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\n1\t10\t100\n2\t11\t100.7\n")
    raw = read_tabular(path)
    pd.testing.assert_frame_equal(
        raw.interactions, interactions([("1", "10", 100), ("2", "11", 100)])
    )
    pd.testing.assert_frame_equal(raw.items, items([("10", "10", ()), ("11", "11", ())]))
    assert raw.users is None


def test_tabular_sniffs_separator(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", "user_id;item_id;timestamp\na;b;1\nc;d;2\n")
    pd.testing.assert_frame_equal(
        read_tabular(path).interactions, interactions([("a", "b", 1), ("c", "d", 2)])
    )
    explicit = write(tmp_path / "log.dat", "user_id::item_id::timestamp\na::b::1\n")
    raw = read_tabular(explicit, separator="::")
    pd.testing.assert_frame_equal(raw.interactions, interactions([("a", "b", 1)]))


def test_tabular_parquet(tmp_path: Path) -> None:
    inter = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [10, 11],
            "timestamp": pd.to_datetime(["1970-01-01 00:00:05", "2024-01-31 12:00:00"]),
        }
    ).to_parquet(inter)
    meta = tmp_path / "meta.parquet"
    pd.DataFrame(
        {"item_id": [10.0, 11.0], "title": ["A", "B"], "tags": [["x", "y"], []]}
    ).to_parquet(meta)
    raw = read_tabular(inter, items=meta, category_column="tags")
    assert raw.name == "events"
    pd.testing.assert_frame_equal(
        raw.interactions, interactions([("1", "10", 5), ("2", "11", 1706702400)])
    )
    pd.testing.assert_frame_equal(raw.items, items([("10", "A", ("x", "y")), ("11", "B", ())]))


def test_tabular_unknown_column(csv_files: tuple[Path, Path, Path]) -> None:
    inter = csv_files[0]
    with raises(
        DataFormatError,
        "ratings.csv",
        "'user_id'",
        "user_column",
        "available columns: uid, iid, when, stars",
    ):
        read_tabular(inter)


def test_tabular_bad_timestamp_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "user_id,item_id,timestamp\na,b,2024-01-01\nc,d,yesterday\n")
    with raises(DataFormatError, "t.csv, line 3", "'yesterday'", "ISO 8601"):
        read_tabular(path)
    numeric = write(tmp_path / "n.csv", "user_id,item_id,timestamp\na,b,5\n\nc,d,later\n")
    with raises(DataFormatError, "n.csv, line 4", "'later'", "not an integer"):
        read_tabular(numeric)


def test_tabular_malformed_row_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "user_id,item_id,timestamp\na,b,1\nc,d,2,extra\n")
    with raises(DataFormatError, "t.csv", "line 3"):
        read_tabular(path)
    empty_id = write(tmp_path / "e.csv", "user_id,item_id,timestamp\na,b,1\n,d,2\n")
    with raises(DataFormatError, "e.csv, line 3", "empty user_id"):
        read_tabular(empty_id)


def test_tabular_misc_errors(tmp_path: Path, csv_files: tuple[Path, Path, Path]) -> None:
    with raises(FileNotFoundError, "nope.csv", "interactions"):
        read_tabular(tmp_path / "nope.csv")
    with raises(ValueError, "category_column", "items"):
        read_tabular(csv_files[0], category_column="genres")
    broken = write(tmp_path / "broken.parquet", "not parquet")
    with raises(DataFormatError, "broken.parquet", "Parquet"):
        read_tabular(broken)


# --------------------------------------------------------------------------- registry


def test_registry_dispatch(ml100k: Path) -> None:
    assert set(DATA_FORMATS) == {"synthetic", "movielens", "recbole", "amazon", "tabular"}
    assert read_dataset("movielens", path=ml100k).name == "ml-100k"


def test_registry_unknown_format() -> None:
    with raises(ValueError, "'netflix'", "amazon, movielens, recbole, synthetic, tabular"):
        read_dataset("netflix", path="x")


def test_registry_unexpected_and_missing_options(ml100k: Path) -> None:
    with raises(ValueError, "movielens", "'sep'", "accepts: path, variant"):
        read_dataset("movielens", path=ml100k, sep="|")
    with raises(ValueError, "amazon", "'reviews'"):
        read_dataset("amazon", meta="m.json")
