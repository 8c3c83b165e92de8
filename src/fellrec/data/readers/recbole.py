"""Reader for RecBole atomic files (``<name>.inter``, ``<name>.item``, ``<name>.user``).

Atomic files are UTF-8 TSV without quoting whose header declares each field as ``name:type``
(``token``, ``token_seq``, ``float``, ``float_seq``). Fields are matched by their name part; ``seq``
fields are space-separated.
"""

from __future__ import annotations

from dataclasses import dataclass
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

#: Field types RecBole defines.
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
#: Item fields taken as the title, first match wins.
TITLE_FIELDS = ("movie_title", "title", "item_name")
#: Item fields taken as the categories, first match wins.
CATEGORY_FIELDS = ("class", "genre", "categories", "category")

# utf-8-sig drops a byte-order mark some editors put in front of the header.
_ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class _AtomicFile:
    """One parsed atomic file: columns keyed by field name, plus each field's declared type."""

    table: Table
    types: dict[str, str]

    def require(self, field: str, role: str) -> list[str]:
        """Values of ``field``, or an error naming the file, the field and the fields present."""
        if field not in self.types:
            present = ", ".join(f"{n}:{t}" for n, t in self.types.items())
            raise DataFormatError(
                f"{self.table.path}: no {field!r} field ({role}); fields: {present}"
            )
        return self.table.strings(field)

    def first_of(self, fields: tuple[str, ...]) -> str | None:
        """The first of ``fields`` the file has, if any."""
        return next((field for field in fields if field in self.types), None)


def read_recbole(
    path: PathLike, name: str | None = None, interactions_only: bool = False
) -> RawDataset:
    """Read a RecBole dataset directory.

    Args:
        path: Directory holding ``<name>.inter``, ``<name>.item`` and optionally ``<name>.user``.
        name: Dataset name (the files' stem). ``None`` detects it when the directory holds exactly
            one ``.inter`` file.
        interactions_only: Read only ``<name>.inter`` (and ``<name>.user`` if present): a silo
            whose items come from a shared catalog. Items then carry their ids as titles.

    Returns:
        The dataset. Interactions carry ``rating`` when the ``.inter`` file has a ``rating``
        field. Titles come from ``movie_title``, ``title`` or ``item_name`` (the item id when none
        exists), categories from ``class``, ``genre``, ``categories`` or ``category`` and
        ``brand`` from a ``brand`` field. Users hold every ``.user`` field as a str column.

    Raises:
        FileNotFoundError: If the directory, the ``.inter`` file or the ``.item`` file is missing.
        DataFormatError: If ``name`` cannot be detected, a required field (``user_id``,
            ``item_id``, ``timestamp``) is missing or a row is malformed.
    """
    directory = require_dir(
        Path(path), "RecBole atomic files <name>.inter, <name>.item and optionally <name>.user"
    )
    if name is None:
        name = _detect_name(directory)
    inter_path = require_file(
        directory / f"{name}.inter", "RecBole interactions (user_id, item_id, timestamp fields)"
    )
    item_path = None
    if not interactions_only:  # checked before the (long) interaction file is parsed
        item_path = require_file(
            directory / f"{name}.item", "RecBole item features (item_id and a title field)"
        )
    inter_table = _read_atomic(inter_path)
    interactions = _read_interactions(inter_table)
    if item_path is None:
        item_ids = pd.unique(interactions["item_id"]).tolist()
        items = items_frame(item_ids, item_ids, [()] * len(item_ids))
    else:
        items = read_recbole_items(item_path)
    user_path = directory / f"{name}.user"
    users = _read_users(_read_atomic(user_path)) if user_path.is_file() else None
    return RawDataset(
        name, interactions, items, users, source=str(inter_path), locate=inter_table.table.where
    )


def read_recbole_items(path: PathLike, require_title: bool = False) -> pd.DataFrame:
    """Read a RecBole ``.item`` file into a ``RawDataset.items`` frame.

    Args:
        path: The ``.item`` file.
        require_title: Refuse a file without a title field (instead of using the item ids).

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If ``item_id`` (or, with ``require_title``, a title field) is missing,
            an id repeats or a row is malformed.
    """
    atomic = _read_atomic(
        require_file(Path(path), "RecBole item features (item_id and a title field)")
    )
    if require_title and atomic.first_of(TITLE_FIELDS) is None:
        atomic.require(" or ".join(TITLE_FIELDS), "item title")
    return _read_items(atomic)


def _detect_name(directory: Path) -> str:
    """The stem of the only ``.inter`` file in ``directory``."""
    candidates = sorted(p.stem for p in directory.glob("*.inter") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(
            f"{directory}: no .inter file (expected RecBole atomic files <name>.inter, <name>.item)"
        )
    raise DataFormatError(
        f"{directory}: several datasets ({', '.join(candidates)}); pass name= to pick one"
    )


def _read_atomic(path: Path) -> _AtomicFile:
    """Parse an atomic file and its typed header."""
    raw = read_delimited(path, "\t", None, _ENCODING)
    types: dict[str, str] = {}
    columns: dict[str, list[str]] = {}
    for declared, values in raw.columns.items():
        field, _, kind = declared.strip().rpartition(":")
        if not field or kind not in FIELD_TYPES:
            raise DataFormatError(
                f"{path}, line 1: header field {declared!r} is not name:type with type one of "
                f"{', '.join(FIELD_TYPES)}"
            )
        if field in types:
            raise DataFormatError(f"{path}, line 1: field {field!r} declared twice")
        types[field] = kind
        columns[field] = values
    return _AtomicFile(Table(path, columns, raw.lines), types)


def _read_interactions(atomic: _AtomicFile) -> pd.DataFrame:
    """Build the interactions frame from a ``.inter`` file."""
    table = atomic.table
    users = atomic.require("user_id", "user of each interaction")
    items = atomic.require("item_id", "item of each interaction")
    atomic.require("timestamp", "interaction time, needed for temporal splits")
    check_not_empty(users, "user_id", table.where)
    check_not_empty(items, "item_id", table.where)
    ratings = table.floats("rating") if "rating" in atomic.types else None
    return interactions_frame(table.path, users, items, table.integers("timestamp"), ratings)


def _read_items(atomic: _AtomicFile) -> pd.DataFrame:
    """Build the items frame from a ``.item`` file."""
    table = atomic.table
    item_ids = atomic.require("item_id", "item id")
    check_not_empty(item_ids, "item_id", table.where)
    check_unique(item_ids, "item_id", table.where)
    title_field = atomic.first_of(TITLE_FIELDS)
    titles = table.strings(title_field) if title_field else item_ids
    categories = _categories(atomic)
    extra = {"brand": table.strings("brand")} if "brand" in atomic.types else None
    return items_frame(item_ids, titles, categories, extra)


def _categories(atomic: _AtomicFile) -> list[tuple[str, ...]]:
    """Per-item categories from the first category field; a ``token`` field is one category."""
    field = atomic.first_of(CATEGORY_FIELDS)
    if field is None:
        return [()] * len(atomic.table)
    values = atomic.table.strings(field)
    if atomic.types[field].endswith("_seq"):
        return [tuple(value.split()) for value in values]
    return [(value.strip(),) if value.strip() else () for value in values]


def _read_users(atomic: _AtomicFile) -> pd.DataFrame:
    """Build the users frame from a ``.user`` file: ``user_id`` plus every other field."""
    table = atomic.table
    user_ids = atomic.require("user_id", "user id")
    check_unique(user_ids, "user_id", table.where)
    attributes = {field: table.strings(field) for field in atomic.types if field != "user_id"}
    return users_frame(user_ids, attributes)
