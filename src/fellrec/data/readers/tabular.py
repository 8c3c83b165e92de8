"""Reader for generic tables: CSV/TSV (optionally compressed) or Parquet files with named columns.

Error locations: in text files, ``line N`` is the file line (the header is line 1; a quoted field
spanning lines shifts later numbers); in Parquet files, ``row N`` counts data rows from 1.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fellrec.data.readers._common import (
    PathLike,
    check_not_empty,
    check_unique,
    dataset_name,
    interactions_frame,
    is_gzip,
    items_frame,
    require_file,
    to_float64,
    to_int64,
    users_frame,
)
from fellrec.data.schema import DataFormatError, RawDataset

#: Separator implied by a text file's extension.
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
#: Extensions read as Parquet.
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Compression suffixes pandas decompresses on its own; they are skipped to find the extension.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
#: Separators the sniffer may pick for a text file without a known extension.
SNIFFED_SEPARATORS = ",\t;|"

_SNIFF_BYTES = 64 * 1024
_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass(frozen=True)
class TableFrame:
    """A loaded table and how to describe the location of its rows.

    Attributes:
        path: The file.
        data: The rows; the index holds each row's 0-based position among the file's data rows.
        text: Whether the file is delimited text (locations are file lines) or Parquet (rows).
    """

    path: Path
    data: pd.DataFrame
    text: bool

    def where(self, row: int) -> str:
        """Location of the row at position ``row`` of ``data``."""
        index = int(self.data.index[row])
        return f"{self.path}, line {index + 2}" if self.text else f"{self.path}, row {index + 1}"

    def column(self, name: str, option: str) -> pd.Series:
        """The column ``name``, or an error naming it, the option that asked for it and the file."""
        if name not in self.data.columns:
            available = ", ".join(str(c) for c in self.data.columns)
            raise DataFormatError(
                f"{self.path}: no column {name!r} ({option}); available columns: {available}"
            )
        return self.data[name]


def read_tabular(
    interactions: PathLike,
    items: PathLike | None = None,
    users: PathLike | None = None,
    user_column: str = "user_id",
    item_column: str = "item_id",
    time_column: str = "timestamp",
    title_column: str = "title",
    category_column: str | None = None,
    category_separator: str = "|",
    rating_column: str | None = None,
    separator: str | None = None,
) -> RawDataset:
    """Read interactions, and optionally items and users, from CSV/TSV or Parquet files.

    Args:
        interactions: Interaction table with user, item and time columns.
        items: Item table with item and title columns (and ``category_column``). ``None`` uses
            each item id as its title, with no categories.
        users: User table: ``user_column`` plus attribute columns, all kept as str.
        user_column: Column of user ids (interactions and users tables).
        item_column: Column of item ids (interactions and items tables).
        time_column: Column of timestamps: numbers (epoch seconds, fractions floored) or ISO 8601
            dates (converted to epoch seconds; dates without a zone are taken as UTC).
        title_column: Column of item titles in the items table.
        category_column: Optional column of item categories in the items table, joined by
            ``category_separator`` (a Parquet list column is used as is).
        category_separator: Separator inside ``category_column``.
        rating_column: Optional column of numeric ratings in the interactions table.
        separator: Field separator of every text file; ``None`` picks it from the extension
            (``.csv`` comma, ``.tsv`` tab) or sniffs it.

    Returns:
        The dataset, named after the interactions file.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If ``category_column`` is given without ``items``.
        DataFormatError: If a column is missing (listing the available ones), a row is malformed or
            a value cannot be parsed (naming the file and line or row).
    """
    if items is None and category_column is not None:
        raise ValueError("category_column needs an items table; pass items=")
    inter_path = Path(interactions)
    table = load_table(inter_path, separator, "interactions: user, item, time columns")
    frame = _interactions(table, user_column, item_column, time_column, rating_column)
    if items is None:
        item_ids = pd.unique(frame["item_id"]).tolist()
        item_frame = items_frame(item_ids, item_ids, [()] * len(item_ids))
    else:
        item_table = load_table(Path(items), separator, "items: item id and title columns")
        item_frame = items_from_table(
            item_table, item_column, title_column, category_column, category_separator
        )
    user_frame = None
    if users is not None:
        user_frame = _users(
            load_table(Path(users), separator, "users: user id column"), user_column
        )
    name = dataset_name(inter_path, (*COMPRESSION_SUFFIXES, *SEPARATORS, ".txt", *PARQUET_SUFFIXES))
    return RawDataset(
        name, frame, item_frame, user_frame, source=str(inter_path), locate=table.where
    )


def load_table(path: Path, separator: str | None, what: str) -> TableFrame:
    """Load a Parquet or delimited text file, turning parser failures into DataFormatError.

    Args:
        path: The file.
        separator: Field separator of a text file; ``None`` picks it from the extension or sniffs.
        what: What the file should hold, for the error when it is missing.
    """
    require_file(path, what)
    if _extension(path) in PARQUET_SUFFIXES:
        try:
            data = pd.read_parquet(path)
        except (OSError, ValueError) as error:  # pyarrow's errors derive from these
            raise DataFormatError(f"{path}: not a readable Parquet file ({error})") from error
        return TableFrame(path, data.reset_index(drop=True), text=False)
    return TableFrame(path, _read_text(path, separator or _separator(path)), text=True)


def _extension(path: Path) -> str:
    """The file's extension, ignoring a compression suffix (``ratings.csv.gz`` -> ``.csv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _separator(path: Path) -> str:
    """The separator implied by the extension, else sniffed from the start of the file."""
    known = SEPARATORS.get(_extension(path))
    if known is not None:
        return known
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(_SNIFF_BYTES)
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFFED_SEPARATORS).delimiter
    except csv.Error:
        raise DataFormatError(
            f"{path}: cannot detect the field separator (tried {SNIFFED_SEPARATORS!r}); "
            "pass separator="
        ) from None


def _read_text(path: Path, separator: str) -> pd.DataFrame:
    """Read a delimited file as str columns, keeping each row's position for error messages."""
    try:
        data = pd.read_csv(
            path,
            sep=separator if len(separator) == 1 else re.escape(separator),
            engine="c" if len(separator) == 1 else "python",
            dtype=str,
            keep_default_na=False,  # ids such as "NA" or "null" stay strings
            skip_blank_lines=False,  # keeps positions aligned with file lines
        )
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: file is empty (expected a header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: malformed file: {error}") from error
    blank = (data == "").all(axis=1)
    return data[~blank]


def _to_text(series: pd.Series) -> list[str]:
    """Values as str: missing values become ``""`` and integral floats lose their ``.0``."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]
        if np.array_equal(finite, np.floor(finite)):
            # Integer ids with gaps are stored as floats in Parquet; "12.0" would not match "12".
            series = series.astype("Int64")
    return ["" if _is_missing(v) else str(v) for v in series.tolist()]


def _is_missing(value: Any) -> bool:
    """Whether a scalar cell is missing (None, NaN, NA or NaT)."""
    return not isinstance(value, (list, tuple, np.ndarray)) and bool(pd.isna(value))


def _ids(frame: TableFrame, column: str, option: str) -> list[str]:
    """Non-empty str ids from ``column``."""
    values = _to_text(frame.column(column, option))
    check_not_empty(values, column, frame.where)
    return values


def _interactions(
    frame: TableFrame,
    user_column: str,
    item_column: str,
    time_column: str,
    rating_column: str | None,
) -> pd.DataFrame:
    """Build the interactions frame."""
    users = _ids(frame, user_column, "user_column")
    items = _ids(frame, item_column, "item_column")
    timestamps = _timestamps(frame, frame.column(time_column, "time_column"))
    ratings = None
    if rating_column is not None:
        rating = frame.column(rating_column, "rating_column").reset_index(drop=True)
        ratings = to_float64(rating, rating_column, frame.where)
    return interactions_frame(frame.path, users, items, timestamps, ratings)


def _timestamps(frame: TableFrame, series: pd.Series) -> np.ndarray:
    """Epoch seconds from numbers, datetimes or ISO 8601 strings.

    The first row fixes whether a str column holds numbers or dates, so a bad value is reported as
    what it fails to be.
    """
    name = str(series.name)
    series = series.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return _epoch_seconds(frame, series, name)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return to_int64(series, name, frame.where)
    if series.empty or not pd.isna(pd.to_numeric(series.iloc[:1], errors="coerce")).all():
        return to_int64(series, name, frame.where)
    dates = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    return _epoch_seconds(frame, dates, name, raw=series)


def _epoch_seconds(
    frame: TableFrame, dates: pd.Series, name: str, raw: pd.Series | None = None
) -> np.ndarray:
    """Whole seconds since 1970-01-01 UTC; naive datetimes are taken as UTC."""
    bad = dates.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = (raw if raw is not None else dates).iloc[row]
        raise DataFormatError(
            f"{frame.where(row)}: {name} {value!r} is not a date (expected ISO 8601, e.g. "
            "2024-01-31 or 2024-01-31T12:00:00Z, like the column's first value)"
        )
    if dates.dt.tz is None:
        dates = dates.dt.tz_localize("UTC")
    return ((dates - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def items_from_table(
    frame: TableFrame,
    item_column: str,
    title_column: str,
    category_column: str | None,
    category_separator: str,
) -> pd.DataFrame:
    """Build a ``RawDataset.items`` frame from an item table.

    Args:
        frame: The loaded item table.
        item_column: Column of item ids (unique, non-empty).
        title_column: Column of titles.
        category_column: Optional column of categories joined by ``category_separator`` (or a
            Parquet list column).
        category_separator: Separator inside ``category_column``.

    Raises:
        DataFormatError: If a column is missing (listing the available ones) or an id is empty
            or repeated (naming the file and line or row).
    """
    item_ids = _ids(frame, item_column, "item_column")
    check_unique(item_ids, item_column, frame.where)
    titles = _to_text(frame.column(title_column, "title_column"))
    if category_column is None:
        categories: list[tuple[str, ...]] = [()] * len(item_ids)
    else:
        cells = frame.column(category_column, "category_column").tolist()
        categories = [_split_categories(cell, category_separator) for cell in cells]
    return items_frame(item_ids, titles, categories)


def _split_categories(cell: Any, separator: str) -> tuple[str, ...]:
    """One cell of the category column as a tuple of non-empty names."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        names = [str(name) for name in cell]
    elif _is_missing(cell):
        names = []
    else:
        names = str(cell).split(separator)
    return tuple(name.strip() for name in names if name.strip())


def _users(frame: TableFrame, user_column: str) -> pd.DataFrame:
    """Build the users frame: the user column plus every other column as str."""
    user_ids = _ids(frame, user_column, "user_column")
    check_unique(user_ids, user_column, frame.where)
    attributes = {
        str(column): _to_text(frame.data[column])
        for column in frame.data.columns
        if column != user_column
    }
    return users_frame(user_ids, attributes)
