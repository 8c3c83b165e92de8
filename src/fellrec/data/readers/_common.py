"""Helpers shared by the readers: file checks, line-numbered parsing and frame construction.

Every reader reports bad input as :class:`~fellrec.data.schema.DataFormatError` naming the file and
line (or field), so the helpers here carry line numbers alongside the parsed values.

Longer than most modules: it is the one toolbox every reader shares (file checks, line-numbered
parsing, typed columns, the frames a reader returns); each helper is small, and splitting them
would make every reader import from several places.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd

from fellrec.data.schema import DataFormatError

#: What readers accept wherever a file or directory is expected.
PathLike: TypeAlias = "str | os.PathLike[str]"
#: Maps a row position to a location such as ``"u.data, line 3"`` for error messages.
WhereFn: TypeAlias = Callable[[int], str]

_GZIP_MAGIC = b"\x1f\x8b"


def require_file(path: Path, what: str) -> Path:
    """Check that ``path`` is an existing file.

    Args:
        path: The file.
        what: What the file should contain, for the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        FileNotFoundError: If the file does not exist.
        DataFormatError: If ``path`` exists but is a directory.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (expected {what})")
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory, expected a file with {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Check that ``path`` is an existing directory.

    Args:
        path: The directory.
        what: What the directory should contain, for the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        FileNotFoundError: If the directory does not exist.
        DataFormatError: If ``path`` exists but is not a directory.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: directory not found (expected {what})")
    if not path.is_dir():
        raise DataFormatError(f"{path}: is not a directory (expected a directory with {what})")
    return path


def is_gzip(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed, judged by its magic bytes rather than its name."""
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def iter_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield the non-blank lines of a (possibly gzip-compressed) text file with their numbers.

    Lines are decoded one at a time so that an encoding error can name its line.

    Args:
        path: The file.
        encoding: Text encoding of the file.

    Yields:
        ``(line_number, line)`` with 1-based line numbers and the line ending removed.

    Raises:
        DataFormatError: If a line cannot be decoded or the gzip stream is corrupt.
    """
    opener = gzip.open if is_gzip(path) else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode(encoding).rstrip("\r\n")
                except UnicodeDecodeError as error:
                    raise DataFormatError(
                        f"{path}, line {number}: not valid {encoding} text ({error.reason})"
                    ) from error
                if line.strip():
                    yield number, line
    except (OSError, EOFError) as error:
        raise DataFormatError(f"{path}, after line {number}: cannot read file ({error})") from error


@dataclass(frozen=True)
class Table:
    """Delimited text parsed into string columns, with the file line of every row.

    Attributes:
        path: The file the rows came from.
        columns: Column name -> the string value of every row.
        lines: 1-based file line of every row, int64.
    """

    path: Path
    columns: dict[str, list[str]]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        """Describe a row's location for error messages, e.g. ``"ratings.dat, line 12"``."""
        return f"{self.path}, line {int(self.lines[row])}"

    def strings(self, column: str) -> list[str]:
        """The raw string values of ``column``."""
        return self.columns[column]

    def integers(self, column: str) -> np.ndarray:
        """Parse ``column`` as int64, naming the first bad row's file line on failure."""
        values = pd.Series(self.columns[column], dtype=object)
        return to_int64(values, column, self.where)

    def floats(self, column: str) -> np.ndarray:
        """Parse ``column`` as float64, naming the first bad row's file line on failure."""
        values = pd.Series(self.columns[column], dtype=object)
        return to_float64(values, column, self.where)


def read_delimited(
    path: Path,
    separator: str,
    fields: Sequence[str] | None,
    encoding: str = "utf-8",
) -> Table:
    """Split a delimited text file without quoting into columns of strings.

    MovieLens and RecBole files use no quoting, so a plain split is exact (and a csv parser would
    wrongly treat quotes inside titles as quoting).

    Args:
        path: The file.
        separator: Field separator, e.g. a tab, ``"|"`` or ``"::"``.
        fields: Column names, in file order. ``None`` takes them from the first line (a header).
        encoding: Text encoding.

    Returns:
        The parsed table.

    Raises:
        DataFormatError: If a row has the wrong number of fields.
    """
    lines = iter_lines(path, encoding)
    if fields is None:
        first = next(lines, None)
        if first is None:
            raise DataFormatError(f"{path}: file is empty (expected a header line)")
        fields = first[1].split(separator)
        repeated = sorted({name for name in fields if fields.count(name) > 1})
        if repeated:
            raise DataFormatError(f"{path}, line {first[0]}: header repeats {', '.join(repeated)}")
    names = list(fields)
    columns: list[list[str]] = [[] for _ in names]
    numbers: list[int] = []
    for number, line in lines:
        values = line.split(separator)
        if len(values) != len(names):
            raise DataFormatError(
                f"{path}, line {number}: expected {len(names)} fields separated by "
                f"{separator!r} ({', '.join(names)}), found {len(values)}: {line[:200]!r}"
            )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        numbers.append(number)
    return Table(
        path=path,
        columns=dict(zip(names, columns, strict=True)),
        lines=np.asarray(numbers, dtype=np.int64),
    )


def _first_bad(mask: np.ndarray) -> int:
    """Position of the first ``True`` in ``mask``."""
    return int(np.flatnonzero(mask)[0])


def to_float64(values: pd.Series, field: str, where: WhereFn) -> np.ndarray:
    """Convert values (strings or numbers) to float64.

    Args:
        values: One value per row, positionally indexed.
        field: Field name, for the error message.
        where: Maps a row position to its location (file and line or row) for the error message.

    Returns:
        The float64 values.

    Raises:
        DataFormatError: Naming the first value that is missing or not a number.
    """
    numbers = pd.to_numeric(values.reset_index(drop=True), errors="coerce")
    result = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(result)
    if bad.any():
        row = _first_bad(bad)
        raise DataFormatError(f"{where(row)}: {field} {values.iloc[row]!r} is not a number")
    return result


def to_int64(values: pd.Series, field: str, where: WhereFn) -> np.ndarray:
    """Convert values (strings or numbers) to int64; fractional values are floored.

    Args:
        values: One value per row, positionally indexed.
        field: Field name, for the error message.
        where: Maps a row position to its location for the error message.

    Returns:
        The int64 values.

    Raises:
        DataFormatError: Naming the first value that is missing or not a finite number.
    """
    numbers = pd.to_numeric(values.reset_index(drop=True), errors="coerce")
    if pd.api.types.is_integer_dtype(numbers.dtype):
        # Exact: going through float64 would round large ids or millisecond clocks.
        return numbers.to_numpy(dtype=np.int64)
    result = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(result)
    if bad.any():
        row = _first_bad(bad)
        raise DataFormatError(f"{where(row)}: {field} {values.iloc[row]!r} is not an integer")
    return np.floor(result).astype(np.int64)


def check_unique(ids: Sequence[str], field: str, where: WhereFn) -> None:
    """Raise if an id occurs twice, naming the location of the second occurrence.

    Args:
        ids: The ids, one per row.
        field: Field name, for the error message.
        where: Maps a row position to its location for the error message.

    Raises:
        DataFormatError: If some id is repeated.
    """
    duplicated = pd.Series(ids, dtype=object).duplicated().to_numpy()
    if duplicated.any():
        row = _first_bad(duplicated)
        raise DataFormatError(f"{where(row)}: duplicate {field} {ids[row]!r}")


def check_not_empty(ids: Sequence[str], field: str, where: WhereFn) -> None:
    """Raise if an id is the empty string, naming its location.

    Args:
        ids: The ids, one per row.
        field: Field name, for the error message.
        where: Maps a row position to its location for the error message.

    Raises:
        DataFormatError: If some id is empty.
    """
    empty = np.fromiter((not value for value in ids), dtype=bool, count=len(ids))
    if empty.any():
        raise DataFormatError(f"{where(_first_bad(empty))}: empty {field}")


def interactions_frame(
    path: Path,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    timestamps: np.ndarray,
    ratings: np.ndarray | None = None,
) -> pd.DataFrame:
    """Build a ``RawDataset.interactions`` frame.

    Args:
        path: The interaction file, for the error raised when it holds no rows.
        user_ids: User id of each interaction.
        item_ids: Item id of each interaction.
        timestamps: Timestamp of each interaction.
        ratings: Optional rating of each interaction.

    Returns:
        Columns ``user_id``, ``item_id``, ``timestamp`` (int64) and, with ratings, ``rating``
        (float64).

    Raises:
        DataFormatError: If there are no interactions.
    """
    if len(user_ids) == 0:
        raise DataFormatError(f"{path}: no interactions in the file")
    data: dict[str, object] = {
        "user_id": list(user_ids),
        "item_id": list(item_ids),
        "timestamp": np.asarray(timestamps, dtype=np.int64),
    }
    if ratings is not None:
        data["rating"] = np.asarray(ratings, dtype=np.float64)
    return pd.DataFrame(data)


def items_frame(
    item_ids: Sequence[str],
    titles: Sequence[str],
    categories: Sequence[tuple[str, ...]],
    extra: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Build a ``RawDataset.items`` frame.

    Args:
        item_ids: Unique item ids.
        titles: Title of each item.
        categories: Categories of each item.
        extra: Further text columns (e.g. ``brand``), in order.

    Returns:
        Columns ``item_id``, ``title``, ``categories`` (tuples of str) and the extra columns.
    """
    data: dict[str, object] = {
        "item_id": pd.Series(list(item_ids), dtype=str),
        "title": pd.Series(list(titles), dtype=str),
        # An object Series keeps each tuple as one cell, also when all tuples have one length.
        "categories": pd.Series(list(categories), dtype=object),
    }
    for name, values in (extra or {}).items():
        data[name] = pd.Series(values, dtype=str)
    return pd.DataFrame(data)


def users_frame(user_ids: Sequence[str], attributes: dict[str, list[str]]) -> pd.DataFrame:
    """Build a ``RawDataset.users`` frame: ``user_id`` then one str column per attribute."""
    data: dict[str, object] = {"user_id": pd.Series(list(user_ids), dtype=str)}
    for name, values in attributes.items():
        data[name] = pd.Series(values, dtype=str)
    return pd.DataFrame(data)


def dataset_name(path: Path, suffixes: Sequence[str]) -> str:
    """A file's name without the given trailing suffixes, e.g. ``Video_Games_5.json.gz`` -> stem.

    Args:
        path: The file.
        suffixes: Suffixes to strip (lower case, with the dot), repeatedly, from the end.

    Returns:
        The remaining name.
    """
    name = path.name
    stripped = True
    while stripped:
        stripped = False
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                stripped = True
    return name
