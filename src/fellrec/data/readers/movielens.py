"""Reader for the original GroupLens MovieLens distributions (ml-100k and ml-1m).

Both ship in latin-1 without quoting; ml-100k separates fields with tabs (``u.data``) or ``|``
(``u.item``, ``u.user``), ml-1m with ``::``. Titles keep their year suffix, e.g.
``"Toy Story (1995)"``, exactly as in the files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fellrec.data.readers._common import (
    PathLike,
    Table,
    check_not_empty,
    check_unique,
    interactions_frame,
    items_frame,
    read_delimited,
    require_dir,
    require_file,
    users_frame,
)
from fellrec.data.schema import DataFormatError, RawDataset

#: The 19 genre flags of ``u.item``, in file order.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

#: ml-1m occupation codes (``users.dat``) as defined in the dataset's README.
ML1M_OCCUPATIONS = {
    "0": "other",
    "1": "academic/educator",
    "2": "artist",
    "3": "clerical/admin",
    "4": "college/grad student",
    "5": "customer service",
    "6": "doctor/health care",
    "7": "executive/managerial",
    "8": "farmer",
    "9": "homemaker",
    "10": "K-12 student",
    "11": "lawyer",
    "12": "programmer",
    "13": "retired",
    "14": "sales/marketing",
    "15": "scientist",
    "16": "self-employed",
    "17": "technician/engineer",
    "18": "tradesman/craftsman",
    "19": "unemployed",
    "20": "writer",
}

#: Variants and the interaction file that identifies each.
VARIANTS = {"ml-100k": "u.data", "ml-1m": "ratings.dat"}

_ENCODING = "latin-1"
_RATING_FIELDS = ("user_id", "item_id", "rating", "timestamp")
_USER_COLUMNS = ("age", "gender", "occupation", "zip_code")
# ml-1m marks genre-less movies this way in later MovieLens releases; it is not a genre.
_NO_GENRES = "(no genres listed)"


def read_movielens(
    path: PathLike, variant: str = "auto", interactions_only: bool = False
) -> RawDataset:
    """Read an extracted MovieLens ml-100k or ml-1m directory.

    Args:
        path: The dataset directory (containing ``u.data`` for ml-100k or ``ratings.dat`` for
            ml-1m).
        variant: ``"ml-100k"``, ``"ml-1m"`` or ``"auto"`` to detect it from the files present.
        interactions_only: Read only the ratings (and the user file if present), not the movie
            file: a silo whose items come from a shared catalog. Items then carry their ids as
            titles.

    Returns:
        The dataset, named after the variant, with ratings. Users are included when the user file
        (``u.user`` / ``users.dat``) exists; their columns are ``age``, ``gender``,
        ``occupation`` (ml-1m codes mapped to their names) and ``zip_code``.

    Raises:
        ValueError: If ``variant`` is unknown.
        FileNotFoundError: If the directory or a required file is missing.
        DataFormatError: If a file is malformed, naming the file and line.
    """
    directory = require_dir(
        Path(path),
        "an extracted MovieLens dataset (u.data, u.item for ml-100k; "
        "ratings.dat, movies.dat for ml-1m)",
    )
    variant = _resolve_variant(directory, variant)
    if variant == "ml-100k":
        return _read_ml100k(directory, interactions_only)
    return _read_ml1m(directory, interactions_only)


def read_movielens_items(path: PathLike) -> pd.DataFrame:
    """Read a MovieLens movie file (ml-100k ``u.item`` or ml-1m ``movies.dat``) as items.

    Args:
        path: The file; its name tells the variant.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If the name is neither, an id repeats or a row is malformed.
    """
    file = Path(path)
    if file.name == "u.item":
        return _ml100k_items(file)
    if file.name == "movies.dat":
        return _ml1m_items(file)
    raise DataFormatError(
        f"{file}: not a MovieLens movie file (expected u.item for ml-100k or movies.dat for ml-1m)"
    )


def _ids_as_items(interactions: pd.DataFrame) -> pd.DataFrame:
    """Items of an interactions-only read: every rated id, its id as its title."""
    item_ids = pd.unique(interactions["item_id"]).tolist()
    return items_frame(item_ids, item_ids, [()] * len(item_ids))


def _resolve_variant(directory: Path, variant: str) -> str:
    """Check ``variant`` or, for ``"auto"``, detect it from the interaction file present."""
    if variant != "auto":
        if variant not in VARIANTS:
            known = ", ".join(["auto", *VARIANTS])
            raise ValueError(f"unknown MovieLens variant {variant!r}; known: {known}")
        return variant
    found = [name for name, marker in VARIANTS.items() if (directory / marker).is_file()]
    if len(found) == 1:
        return found[0]
    markers = " or ".join(f"{marker} ({name})" for name, marker in VARIANTS.items())
    if not found:
        present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"{directory}: no MovieLens rating file found (expected {markers}); present: {present}"
        )
    raise DataFormatError(
        f"{directory}: contains both {markers}; pass variant='ml-100k' or 'ml-1m'"
    )


def _read_ratings(path: Path, separator: str) -> Table:
    """Read a rating file (user, item, rating, timestamp) and check its ids."""
    table = read_delimited(path, separator, _RATING_FIELDS, _ENCODING)
    check_not_empty(table.strings("user_id"), "user id", table.where)
    check_not_empty(table.strings("item_id"), "item id", table.where)
    return table


def _interactions(table: Table) -> pd.DataFrame:
    """Build the interactions frame from a rating table."""
    return interactions_frame(
        table.path,
        table.strings("user_id"),
        table.strings("item_id"),
        table.integers("timestamp"),
        table.floats("rating"),
    )


def _read_ml100k(directory: Path, interactions_only: bool) -> RawDataset:
    """Read ``u.data``, ``u.item`` (unless ``interactions_only``) and (if present) ``u.user``."""
    ratings = _read_ratings(
        require_file(directory / "u.data", "ml-100k ratings: user id, item id, rating, timestamp"),
        "\t",
    )
    interactions = _interactions(ratings)
    items = (
        _ids_as_items(interactions) if interactions_only else _ml100k_items(directory / "u.item")
    )
    users = None
    user_path = directory / "u.user"
    if user_path.is_file():
        user_table = read_delimited(user_path, "|", ("user_id", *_USER_COLUMNS), _ENCODING)
        check_unique(user_table.strings("user_id"), "user id", user_table.where)
        users = users_frame(
            user_table.strings("user_id"),
            {column: user_table.strings(column) for column in _USER_COLUMNS},
        )
    return RawDataset(
        "ml-100k", interactions, items, users, source=str(ratings.path), locate=ratings.where
    )


def _ml100k_items(path: Path) -> pd.DataFrame:
    """The movies of ``u.item``."""
    item_path = require_file(path, "ml-100k movies: id|title|date|...|genre flags")
    fields = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES)
    movies = read_delimited(item_path, "|", fields, _ENCODING)
    check_unique(movies.strings("item_id"), "item id", movies.where)
    return items_frame(movies.strings("item_id"), movies.strings("title"), _genre_flags(movies))


def _genre_flags(movies: Table) -> list[tuple[str, ...]]:
    """Turn the 19 ``0``/``1`` genre columns of ``u.item`` into per-movie genre tuples."""
    flags = [movies.strings(genre) for genre in ML100K_GENRES]
    for genre, column in zip(ML100K_GENRES, flags, strict=True):
        for row, value in enumerate(column):
            if value not in ("0", "1"):
                raise DataFormatError(
                    f"{movies.where(row)}: genre flag {genre!r} is {value!r}, expected 0 or 1"
                )
    return [
        tuple(genre for genre, value in zip(ML100K_GENRES, row, strict=True) if value == "1")
        for row in zip(*flags, strict=True)
    ]


def _read_ml1m(directory: Path, interactions_only: bool) -> RawDataset:
    """Read ``ratings.dat``, ``movies.dat`` (unless ``interactions_only``), ``users.dat``."""
    ratings = _read_ratings(
        require_file(
            directory / "ratings.dat", "ml-1m ratings: UserID::MovieID::Rating::Timestamp"
        ),
        "::",
    )
    interactions = _interactions(ratings)
    items = (
        _ids_as_items(interactions) if interactions_only else _ml1m_items(directory / "movies.dat")
    )
    users = None
    user_path = directory / "users.dat"
    if user_path.is_file():
        fields = ("user_id", "gender", "age", "occupation", "zip_code")
        user_table = read_delimited(user_path, "::", fields, _ENCODING)
        check_unique(user_table.strings("user_id"), "user id", user_table.where)
        attributes = {column: user_table.strings(column) for column in _USER_COLUMNS}
        attributes["occupation"] = [
            ML1M_OCCUPATIONS.get(code, code) for code in attributes["occupation"]
        ]
        users = users_frame(user_table.strings("user_id"), attributes)
    return RawDataset(
        "ml-1m", interactions, items, users, source=str(ratings.path), locate=ratings.where
    )


def _ml1m_items(path: Path) -> pd.DataFrame:
    """The movies of ``movies.dat``."""
    item_path = require_file(path, "ml-1m movies: MovieID::Title::Genres")
    movies = read_delimited(item_path, "::", ("item_id", "title", "genres"), _ENCODING)
    check_unique(movies.strings("item_id"), "item id", movies.where)
    genres = [
        tuple(g for g in value.split("|") if g and g != _NO_GENRES)
        for value in movies.strings("genres")
    ]
    return items_frame(movies.strings("item_id"), movies.strings("title"), genres)
