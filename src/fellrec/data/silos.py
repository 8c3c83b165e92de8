"""A silo's data is its own: its interaction file(s) read against the public catalog.

A silo is a directory or file of interactions in any supported format (``data.dataset.format``
and its options, with the silo's path in place of ``data.dataset.path``), read without the
format's item metadata: the catalog (:mod:`fellrec.data.catalog`) supplies the items and fixes
their indices. User ids are local to a silo. Everything here uses that one silo's data only, so a
deployed client computes exactly what the simulation of the same silos computes for it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fellrec.data.catalog import Catalog
from fellrec.data.kcore import kcore_filter
from fellrec.data.readers import DATA_FORMATS
from fellrec.data.readers.tabular import COMPRESSION_SUFFIXES, PARQUET_SUFFIXES, SEPARATORS
from fellrec.data.schema import (
    DataFormatError,
    EvalUsers,
    IndexedDataset,
    RawDataset,
    Split,
    TrainExamples,
    index_interactions,
)
from fellrec.data.sources import DatasetSettings, filter_min_rating, read_raw

log = logging.getLogger(__name__)

#: ``data.unknown_items`` values: count, warn and leave out, or refuse.
UNKNOWN_ITEM_POLICIES = ("report", "error")
#: Tabular options that describe the catalog's columns in silo mode, not the silo's file.
CATALOG_COLUMN_OPTIONS = ("title_column", "category_column", "category_separator")
#: How many unknown item ids a report quotes.
QUOTED_IDS = 5


@dataclass(frozen=True)
class SiloReport:
    """What reading one silo found (printed by ``fellrec data stats``, warned about when read).

    Attributes:
        client: The client the silo is.
        path: The silo as configured.
        source: The interaction file read.
        interactions: Interactions read (after ``min_rating``).
        unknown_items: Interactions whose item the catalog lacks (left out).
        unknown_examples: A few of those item ids.
        kept: Interactions kept (after the silo's k-core).
        users: Users kept.
        valid_users: Validation users.
        test_users: Test users.
    """

    client: int
    path: str
    source: str
    interactions: int
    unknown_items: int
    unknown_examples: tuple[str, ...]
    kept: int
    users: int
    valid_users: int = 0
    test_users: int = 0


def silo_settings(dataset: DatasetSettings, path: str) -> DatasetSettings:
    """The reader settings of one silo: the dataset's, with the silo's path and no item files.

    A tabular silo may be a directory holding exactly one table.

    Raises:
        ValueError: If the format reads no files (synthetic) or an option names an item file
            (naming it).
    """
    fmt = dataset.format
    data_format = DATA_FORMATS.get(fmt)  # an unknown one is refused, by name, when it is read
    if data_format is not None and data_format.path_option is None:
        file_formats = [name for name, known in DATA_FORMATS.items() if known.path_option]
        raise ValueError(
            "data.silos / data.silo need files: set data.dataset.format to the silos' format "
            f"({', '.join(file_formats[:-1])} or {file_formats[-1]})"
        )
    # A silo's items come from the catalog, not from the format's item files.
    for option in data_format.item_file_options if data_format is not None else ():
        if dataset.options.get(option) is not None:
            raise ValueError(
                f"data.dataset.options.{option} names an item file, but with silos the items "
                "come from data.catalog; remove the option"
            )
    options = dict(dataset.options)
    if fmt == "tabular":
        for option in CATALOG_COLUMN_OPTIONS:  # they describe the catalog here
            options.pop(option, None)
        path = str(_single_table(Path(path).expanduser()))
    return dataclasses.replace(dataset, path=path, options=options)


def _single_table(path: Path) -> Path:
    """``path``, or for a directory the one table file in it."""
    if not path.is_dir():
        return path
    suffixes = (*SEPARATORS, *PARQUET_SUFFIXES, ".txt")
    tables = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and _strip_compression(p.name.lower()).endswith(suffixes)
    )
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise DataFormatError(
            f"{path}: a tabular silo directory must hold exactly one interactions table "
            f"({', '.join(suffixes)}), found {found}; give the file as the silo instead"
        )
    return tables[0]


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def read_silo(
    dataset: DatasetSettings,
    path: str,
    catalog: Catalog,
    client: int,
    unknown_items: str = "report",
) -> tuple[IndexedDataset, SiloReport]:
    """Read one silo: its interactions, ``min_rating``, the catalog's item indices, its k-core.

    Args:
        dataset: The format, reader options, ``min_rating`` and ``kcore`` (per silo; it never
            removes catalog items).
        path: The silo's directory or file (relative paths resolve against the working
            directory).
        catalog: The public catalog.
        client: The client this silo is (for messages).
        unknown_items: ``"report"``: interactions with items outside the catalog are counted and
            left out; ``"error"``: the first one is refused, naming its file and line.

    Returns:
        The silo's indexed data (all catalog items, its own users) and what reading it found.

    Raises:
        ValueError: If the silo holds no usable interaction (naming it) or, with
            ``unknown_items="error"``, an item is not in the catalog (naming file and line).
    """
    label = f"silo {path} (client {client})"
    raw = read_raw(silo_settings(dataset, path), seed=0, interactions_only=True)
    raw = filter_min_rating(raw, dataset.min_rating)
    source = raw.source or path
    if raw.interactions.empty:
        raise ValueError(f"{label}: no interaction left after data.dataset.min_rating")
    indexed, unknown, examples = index_against_catalog(raw, catalog, unknown_items, path)
    kept = kcore_filter(indexed, dataset.kcore, keep_catalog=True)
    report = SiloReport(
        client=client,
        path=path,
        source=source,
        interactions=len(raw.interactions),
        unknown_items=unknown,
        unknown_examples=examples,
        kept=kept.num_interactions,
        users=kept.num_users,
    )
    return kept, report


def index_against_catalog(
    raw: RawDataset, catalog: Catalog, unknown_items: str, name: str
) -> tuple[IndexedDataset, int, tuple[str, ...]]:
    """Index a silo's interactions with the catalog's item indices.

    Args:
        raw: The silo's interactions (``min_rating`` applied).
        catalog: The catalog (every item of it stays, in its order).
        unknown_items: ``"report"`` or ``"error"`` (see :func:`read_silo`).
        name: The dataset's name (the silo), for messages.

    Returns:
        The indexed silo, the number of interactions left out for items outside the catalog,
        and a few of their item ids.

    Raises:
        DataFormatError: With ``"error"``, naming the first such interaction's file and line;
            or when no interaction's item is in the catalog.
    """
    if unknown_items not in UNKNOWN_ITEM_POLICIES:
        raise ValueError(
            f"data.unknown_items={unknown_items!r} is unknown; choose from "
            f"{', '.join(UNKNOWN_ITEM_POLICIES)}"
        )
    inter = raw.interactions.astype({"user_id": str, "item_id": str})
    known = catalog.indices(inter["item_id"].to_numpy()) >= 0
    source = raw.source or name
    if not known.all():
        unknown_ids = inter["item_id"].to_numpy()[~known]
        first = int(np.flatnonzero(~known)[0])
        if unknown_items == "error":
            label = inter.index[first]
            where = raw.locate(int(label)) if raw.locate else f"{source}, row {first + 1}"
            raise DataFormatError(
                f"{where}: item {unknown_ids[0]!r} is not in the catalog {catalog.path} "
                "(data.unknown_items: error; 'report' counts such interactions and leaves them "
                "out)"
            )
        if not known.any():
            raise DataFormatError(
                f"silo {name}: none of the items of its {len(inter)} interactions ({source}) is "
                f"in the catalog {catalog.path} (e.g. {_quote(unknown_ids)}); is it the catalog "
                "of the same data?"
            )
    unknown = inter["item_id"].to_numpy()[~known]
    indexed = index_interactions(
        name, inter[known], catalog.item_ids, catalog.titles, catalog.categories, raw.users
    )
    return indexed, len(unknown), tuple(str(i) for i in pd.unique(unknown)[:QUOTED_IDS])


def _quote(ids: np.ndarray) -> str:
    return ", ".join(repr(str(i)) for i in pd.unique(ids)[:QUOTED_IDS])


def announce_silos(reports: Sequence[SiloReport], catalog: str) -> None:
    """Warn about each silo's interactions outside the catalog and its empty evaluation periods.

    Args:
        reports: One per silo read.
        catalog: The catalog file, for the message.
    """
    for report in reports:
        if report.unknown_items:
            log.warning(
                "data: %s (client %d): %d of %d interactions refer to items not in the catalog "
                "%s (e.g. %s); they are left out (data.unknown_items: report; 'error' refuses "
                "them)",
                report.source,
                report.client,
                report.unknown_items,
                report.interactions,
                catalog,
                ", ".join(repr(i) for i in report.unknown_examples),
            )
        for period, count in (("validation", report.valid_users), ("test", report.test_users)):
            if count == 0:
                log.warning(
                    "data: client %d (silo %s) has no %s users: the split leaves none of its "
                    "users a history and a new item in that period (see data.temporal_cutoffs); "
                    "it trains, but has no %s metrics",
                    report.client,
                    report.path,
                    period,
                    period,
                )


def format_silo_table(reports: Sequence[SiloReport]) -> str:
    """What reading each silo found, one line per silo."""
    return "\n".join(
        f"client {r.client}: {r.source}: {r.interactions} interactions read, {r.unknown_items} "
        f"with items outside the catalog (left out), {r.kept} kept, {r.users} users"
        for r in reports
    )


def merge_silos(
    parts: Sequence[tuple[IndexedDataset, Split, TrainExamples]],
    clients: Sequence[int],
    name: str,
) -> tuple[IndexedDataset, Split, TrainExamples, np.ndarray]:
    """Put silos side by side as one dataset whose users are numbered silo after silo.

    Silo ``k``'s users keep their order and are offset by the users of the silos before it, so
    each client's examples and evaluation users come out in the same order as in the silo alone.
    Interactions are re-sorted by time (stably: a user's own order is kept).

    Args:
        parts: Per silo its indexed data (same catalog), split and training examples.
        clients: The client of each silo.
        name: The merged dataset's name.

    Returns:
        The merged dataset, split and examples, and the client of every user ``(num_users,)``.
    """
    sizes = np.array([dataset.num_users for dataset, _, _ in parts], dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    datasets = [dataset for dataset, _, _ in parts]
    users = np.concatenate([d.users + offset for d, offset in zip(datasets, offsets, strict=True)])
    items = np.concatenate([d.items for d in datasets])
    timestamps = np.concatenate([d.timestamps for d in datasets])
    order = np.argsort(timestamps, kind="stable")
    first = datasets[0]
    merged = IndexedDataset(
        name=name,
        user_ids=np.concatenate([d.user_ids for d in datasets]).astype(object),
        item_ids=first.item_ids,
        users=users[order],
        items=items[order],
        timestamps=timestamps[order],
        titles=first.titles,
        categories=first.categories,
        user_attributes=_merge_attributes(datasets),
    )
    splits = [split for _, split, _ in parts]
    split = Split(
        method=splits[0].method,
        train_sequences=[seq for s in splits for seq in s.train_sequences],
        valid=_merge_eval([s.valid for s in splits], offsets),
        test=_merge_eval([s.test for s in splits], offsets),
        cutoffs=splits[0].cutoffs,
        new_items=splits[0].new_items,  # drawn from the shared catalog: the same in every silo
    )
    examples = [ex for _, _, ex in parts]
    merged_examples = TrainExamples(
        users=np.concatenate([e.users + o for e, o in zip(examples, offsets, strict=True)]),
        histories=np.concatenate([e.histories for e in examples]),
        targets=np.concatenate([e.targets for e in examples]),
    )
    assignment = np.repeat(np.asarray(clients, dtype=np.int64), sizes)
    return merged, split, merged_examples, assignment


def _merge_eval(periods: Sequence[EvalUsers], offsets: np.ndarray) -> EvalUsers:
    return EvalUsers(
        users=np.concatenate([p.users + o for p, o in zip(periods, offsets, strict=True)]).astype(
            np.int64
        ),
        histories=[h for p in periods for h in p.histories],
        targets=[t for p in periods for t in p.targets],
        consumed=[c for p in periods for c in p.consumed],
    )


def _merge_attributes(datasets: Sequence[IndexedDataset]) -> dict[str, np.ndarray]:
    """User attribute columns of all silos; a silo without a column gives ``"unknown"``."""
    names = sorted({name for d in datasets for name in d.user_attributes})
    return {
        name: np.concatenate(
            [
                d.user_attributes.get(name, np.full(d.num_users, "unknown", dtype=object))
                for d in datasets
            ]
        ).astype(str)
        for name in names
    }
