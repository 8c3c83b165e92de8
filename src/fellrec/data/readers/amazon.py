"""Reader for Amazon Reviews (McAuley lab) JSON-lines dumps, 2014/2018 and 2023 formats.

* 2018 (and 2014): reviews have ``reviewerID``, ``asin``, ``unixReviewTime`` (seconds) and
  ``overall``; metadata has ``asin``, ``title``, ``brand`` and ``category`` (2014: ``categories``,
  a list of category paths). The older dumps write one Python dict literal per line instead of JSON.
* 2023: reviews have ``user_id``, ``parent_asin`` (the item: variants of one product share it),
  ``timestamp`` in milliseconds and ``rating``; metadata has ``parent_asin``, ``title``,
  ``categories``, ``main_category`` and ``store`` (the brand).

Files may be gzip-compressed (detected from their content) or plain.
"""

from __future__ import annotations

import ast
import html
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fellrec.data.readers._common import (
    PathLike,
    dataset_name,
    interactions_frame,
    items_frame,
    iter_lines,
    require_file,
    to_float64,
    to_int64,
)
from fellrec.data.schema import DataFormatError, RawDataset


@dataclass(frozen=True)
class ReviewFormat:
    """Where one dump format keeps each field.

    Attributes:
        name: Format name (release year).
        user: Review key of the user id.
        item: Review key of the item id (also the metadata key of the item id).
        time: Review key of the timestamp.
        rating: Review key of the star rating.
        ticks_per_second: Timestamp units per second.
        brand: Metadata key of the brand.
    """

    name: str
    user: str
    item: str
    time: str
    rating: str
    ticks_per_second: int
    brand: str


#: The known formats, in detection order.
FORMATS = (
    ReviewFormat("2018", "reviewerID", "asin", "unixReviewTime", "overall", 1, "brand"),
    ReviewFormat("2023", "user_id", "parent_asin", "timestamp", "rating", 1000, "store"),
)

_NAME_SUFFIXES = (".gz", ".jsonl", ".json")


def read_amazon(reviews: PathLike, meta: PathLike | None = None) -> RawDataset:
    """Read an Amazon reviews file and, optionally, its metadata file.

    Args:
        reviews: Reviews as JSON lines (e.g. ``Video_Games_5.json.gz`` or ``Video_Games.jsonl``).
        meta: Item metadata as JSON lines (e.g. ``meta_Video_Games.json.gz``). Without it every
            reviewed item is kept with its id as title and no categories.

    Returns:
        The dataset, named after the reviews file, with ratings and timestamps in seconds. With
        ``meta``, ``items`` holds only reviewed items whose metadata has a non-empty title (the
        others' interactions are dropped by :func:`~fellrec.data.schema.index_dataset`), with
        HTML entities in titles and categories decoded and a ``brand`` column (empty when
        unknown). Duplicate metadata records keep the first.

    Raises:
        FileNotFoundError: If a file is missing.
        DataFormatError: If a line is neither JSON nor a dict literal, a record lacks a required
            key, the two files are in different formats, or no reviewed item has metadata.
    """
    review_path = require_file(Path(reviews), "Amazon reviews as JSON lines")
    meta_path = None if meta is None else require_file(Path(meta), "Amazon metadata as JSON lines")
    review_format, interactions, where = _read_reviews(review_path)
    item_ids = pd.unique(interactions["item_id"]).tolist()
    if meta_path is None:
        items = items_frame(item_ids, item_ids, [()] * len(item_ids))
    else:
        items = _read_meta(meta_path, review_format, set(item_ids))
    name = dataset_name(review_path, _NAME_SUFFIXES)
    return RawDataset(name, interactions, items, source=str(review_path), locate=where)


def read_amazon_meta(meta: PathLike) -> pd.DataFrame:
    """Read every item of an Amazon metadata file (2014/2018 or 2023) that has a title.

    Args:
        meta: Item metadata as JSON lines, gzip or plain.

    Returns:
        A ``RawDataset.items`` frame in file order, with a ``brand`` column.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If a line is malformed, an item id repeats (naming both lines' item) or
            no record has a title.
    """
    path = require_file(Path(meta), "Amazon metadata as JSON lines")
    return _read_meta(path, None, None)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line of a JSON-lines file."""
    for number, line in iter_lines(path, "utf-8"):
        yield number, _parse_record(path, number, line)


def _parse_record(path: Path, number: int, line: str) -> dict[str, Any]:
    """Parse one line as JSON or, for the older dumps, as a Python dict literal."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            raise DataFormatError(
                f"{path}, line {number}: neither JSON nor a Python dict literal: {line[:200]!r}"
            ) from error
    if not isinstance(record, dict):
        raise DataFormatError(
            f"{path}, line {number}: expected one object per line, found {type(record).__name__}"
        )
    return record


def _detect_review_format(path: Path, number: int, record: dict[str, Any]) -> ReviewFormat:
    """The format whose review keys the first review record has."""
    for review_format in FORMATS:
        if all(key in record for key in _review_keys(review_format)):
            return review_format
    expected = "; ".join(f"{f.name}: {', '.join(_review_keys(f))}" for f in FORMATS)
    raise DataFormatError(
        f"{path}, line {number}: unknown Amazon review format; expected keys ({expected}), "
        f"found {', '.join(sorted(record)) or 'none'}"
    )


def _detect_meta_format(path: Path, number: int, record: dict[str, Any]) -> ReviewFormat:
    """The format of the first metadata record, judged by its item key."""
    # 2023 records may carry an "asin" too, so the 2023 key is tested first.
    for review_format in sorted(FORMATS, key=lambda f: f.name, reverse=True):
        if review_format.item in record:
            return review_format
    expected = " or ".join(f"{f.item} ({f.name})" for f in FORMATS)
    raise DataFormatError(
        f"{path}, line {number}: unknown Amazon metadata format; expected the key {expected}, "
        f"found {', '.join(sorted(record)) or 'none'}"
    )


def _review_keys(review_format: ReviewFormat) -> tuple[str, ...]:
    """Keys every review of ``review_format`` must have."""
    return (review_format.user, review_format.item, review_format.time, review_format.rating)


def _field(path: Path, number: int, record: dict[str, Any], key: str, kind: str) -> Any:
    """``record[key]``, or an error naming the file, line and missing key."""
    try:
        return record[key]
    except KeyError:
        raise DataFormatError(
            f"{path}, line {number}: {kind} record lacks {key!r}; keys: {', '.join(sorted(record))}"
        ) from None


def _identifier(path: Path, number: int, value: Any, key: str) -> str:
    """An id value as a non-empty str."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataFormatError(f"{path}, line {number}: {key} {value!r} is not an id")
    return str(value)


def _read_reviews(path: Path) -> tuple[ReviewFormat, pd.DataFrame, Callable[[int], str]]:
    """Read the reviews file; the first record fixes the format for the whole file."""
    review_format: ReviewFormat | None = None
    users: list[str] = []
    items: list[str] = []
    times: list[Any] = []
    ratings: list[Any] = []
    lines: list[int] = []
    for number, record in _records(path):
        if review_format is None:
            review_format = _detect_review_format(path, number, record)
        user, item, time, rating = (
            _field(path, number, record, key, "review") for key in _review_keys(review_format)
        )
        users.append(_identifier(path, number, user, review_format.user))
        items.append(_identifier(path, number, item, review_format.item))
        times.append(time)
        ratings.append(rating)
        lines.append(number)
    if review_format is None:
        raise DataFormatError(f"{path}: no reviews in the file")

    def where(row: int) -> str:
        return f"{path}, line {lines[row]}"

    seconds = to_int64(pd.Series(times, dtype=object), review_format.time, where)
    # Floor division keeps second resolution, all the temporal splits need.
    seconds = seconds // review_format.ticks_per_second
    stars = to_float64(pd.Series(ratings, dtype=object), review_format.rating, where)
    return review_format, interactions_frame(path, users, items, seconds, stars), where


def _read_meta(
    path: Path, review_format: ReviewFormat | None, wanted: set[str] | None
) -> pd.DataFrame:
    """Read the metadata of the items that have a title.

    Args:
        path: The metadata file.
        review_format: The reviews' format, which the metadata must share; ``None``: any.
        wanted: Keep these items, the first record of each; ``None``: keep every item, and a
            repeated id is an error (a catalog's ids are unique).
    """
    meta_format: ReviewFormat | None = None
    ids: list[str] = []
    titles: list[str] = []
    categories: list[tuple[str, ...]] = []
    brands: list[str] = []
    seen: set[str] = set()
    for number, record in _records(path):
        if meta_format is None:
            meta_format = (
                _detect_meta_format(path, number, record)
                if review_format is None
                else _check_meta_format(path, number, record, review_format)
            )
        key = meta_format.item
        item_id = _identifier(path, number, _field(path, number, record, key, "metadata"), key)
        title = clean_text(record.get("title"))
        if wanted is None:
            if item_id in seen:
                raise DataFormatError(f"{path}, line {number}: duplicate {key} {item_id!r}")
            seen.add(item_id)
        elif item_id not in wanted:
            continue
        if not title:
            continue
        if wanted is not None:
            wanted.discard(item_id)  # Later duplicates of this item are skipped.
        ids.append(item_id)
        titles.append(title)
        categories.append(_categories(record))
        brands.append(clean_text(record.get(meta_format.brand)))
    if not ids:
        raise DataFormatError(
            f"{path}: no reviewed item has a metadata record with a title (is this the metadata "
            "file of the same category?)"
            if wanted is not None
            else f"{path}: no metadata record has a title"
        )
    return items_frame(ids, titles, categories, {"brand": brands})


def _check_meta_format(
    path: Path, number: int, record: dict[str, Any], review_format: ReviewFormat
) -> ReviewFormat:
    """Detect the metadata format and check that it matches the reviews' format."""
    meta_format = _detect_meta_format(path, number, record)
    if meta_format != review_format:
        raise DataFormatError(
            f"{path}: metadata is in the {meta_format.name} format but the reviews are in the "
            f"{review_format.name} format; their item ids would not match"
        )
    return meta_format


def clean_text(value: Any) -> str:
    """Decode HTML entities and collapse whitespace; anything but a str becomes ``""``."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(value).split())


def _categories(record: dict[str, Any]) -> tuple[str, ...]:
    """Categories of a metadata record, in order, without duplicates.

    2018 has a flat ``category`` list, 2014 a list of category paths under ``categories`` and 2023
    a flat ``categories`` list that is often empty; then its ``main_category`` is used.
    """
    raw = record.get("category") or record.get("categories") or record.get("main_category")
    names: list[str] = []
    for entry in _flatten(raw):
        name = clean_text(entry)
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _flatten(value: Any) -> Iterator[Any]:
    """Yield the leaves of nested lists (a non-list value is its own leaf)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        for entry in value:
            yield from _flatten(entry)
    elif value is not None:
        yield value
