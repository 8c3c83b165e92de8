"""The public item catalog: the items every party of a federation shares, in a fixed order.

The catalog's file order is the item index of every party, so item rows, title embeddings, item
ID embeddings and biases line up across silos without any silo revealing its interactions. It is
read with the item parsing of the readers (no second parser): a table (CSV/TSV/Parquet with item
id, title and categories columns), a RecBole ``.item`` file, a MovieLens ``u.item`` or
``movies.dat`` file, or an Amazon metadata file (JSON lines). Items no silo consumes stay in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fellrec.data.readers._common import require_file
from fellrec.data.readers.amazon import read_amazon_meta
from fellrec.data.readers.movielens import read_movielens_items
from fellrec.data.readers.recbole import read_recbole_items
from fellrec.data.readers.tabular import COMPRESSION_SUFFIXES, items_from_table, load_table
from fellrec.data.schema import DataFormatError

#: Tabular reader options that also describe a tabular catalog's columns.
CATALOG_OPTIONS = ("item_column", "title_column", "category_column", "category_separator")
#: A tabular catalog's category column when ``category_column`` is not set and the file has it.
DEFAULT_CATEGORY_COLUMN = "categories"
#: What a catalog file holds, for the error when it is missing.
CATALOG_CONTENT = "the public item catalog: item id, title and categories of every item"


@dataclass(frozen=True)
class Catalog:
    """The shared items, in index order.

    Attributes:
        path: The file it was read from.
        item_ids: Original id of each item index, shape ``(I,)`` (unique).
        titles: Title of each item index.
        categories: Categories of each item index (tuple of str, possibly empty).
    """

    path: str
    item_ids: np.ndarray
    titles: list[str]
    categories: list[tuple[str, ...]]

    @property
    def num_items(self) -> int:
        """Number of items."""
        return len(self.item_ids)

    def indices(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """The item index of each id, ``-1`` for an id the catalog does not hold (int64)."""
        found = pd.Index(self.item_ids).get_indexer(np.asarray(ids, dtype=object))
        return np.asarray(found, dtype=np.int64)


def read_catalog(path: str | Path, options: Mapping[str, Any] | None = None) -> Catalog:
    """Read a catalog file; its name tells its format.

    ``*.item``: RecBole item features (a title field is required). ``u.item`` / ``movies.dat``:
    MovieLens. ``*.json``/``*.jsonl`` (optionally ``.gz``): Amazon metadata (items without a title
    are left out). Anything else: a table read like the tabular reader's item table, with columns
    ``item_column`` (default ``item_id``), ``title_column`` (``title``) and ``category_column``
    (``categories`` when the file has such a column), all overridable by ``options``.

    Args:
        path: The catalog file.
        options: Reader options; those in :data:`CATALOG_OPTIONS` and ``separator`` apply to a
            tabular catalog, the others are ignored.

    Returns:
        The catalog in file order.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If an id repeats (naming the line), the title column is missing, or the
            file holds no item.
    """
    file = require_file(Path(path).expanduser(), CATALOG_CONTENT)
    items = _read_items(file, dict(options or {}))
    if items.empty:
        raise DataFormatError(f"{file}: the catalog holds no items ({CATALOG_CONTENT})")
    ids = items["item_id"].astype(str).tolist()  # unique: every item parser checks it
    categories = [
        tuple(str(c) for c in cats) if cats is not None else () for cats in items["categories"]
    ]
    return Catalog(
        path=str(file),
        item_ids=np.array(ids, dtype=object),
        titles=[str(title) for title in items["title"].tolist()],
        categories=categories,
    )


def _read_items(file: Path, options: dict[str, Any]) -> pd.DataFrame:
    """The items frame of ``file`` with the parser its name calls for."""
    name = file.name.lower()
    stem = name
    for suffix in COMPRESSION_SUFFIXES:
        stem = stem.removesuffix(suffix)
    if name.endswith(".item") and name != "u.item":
        return read_recbole_items(file, require_title=True)
    if name in ("u.item", "movies.dat"):
        return read_movielens_items(file)
    if stem.endswith((".json", ".jsonl")):
        return read_amazon_meta(file)
    table = load_table(file, options.get("separator"), CATALOG_CONTENT)
    category_column = options.get("category_column")
    if category_column is None and DEFAULT_CATEGORY_COLUMN in table.data.columns:
        category_column = DEFAULT_CATEGORY_COLUMN
    return items_from_table(
        table,
        str(options.get("item_column") or "item_id"),
        str(options.get("title_column") or "title"),
        category_column,
        str(options.get("category_separator") or "|"),
    )


def write_catalog_table(
    path: Path,
    item_ids: Sequence[str],
    titles: Sequence[str],
    categories: Sequence[tuple[str, ...]],
) -> str:
    """Write a catalog as a CSV table that :func:`read_catalog` reads back exactly.

    Args:
        path: The ``.csv`` file to write.
        item_ids: Item ids, in index order.
        titles: Title of each item.
        categories: Categories of each item.

    Returns:
        The separator joining the categories (``|`` unless a category contains one).

    Raises:
        ValueError: If every candidate separator occurs in some category name.
    """
    names = {name for cats in categories for name in cats}
    separator = next(
        (sep for sep in ("|", ";", "^", "~") if not any(sep in name for name in names)), None
    )
    if separator is None:
        raise ValueError(f"{path}: every category separator (| ; ^ ~) occurs in a category name")
    frame = pd.DataFrame(
        {
            "item_id": list(item_ids),
            "title": list(titles),
            DEFAULT_CATEGORY_COLUMN: [separator.join(cats) for cats in categories],
        }
    )
    frame.to_csv(path, index=False)
    return separator
