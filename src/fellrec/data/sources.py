"""Where interactions come from: the dataset settings, reading them, and the first filter.

Shared by the central pipeline (all data in one place) and the silo pipeline (each client's own
files against a public catalog), so both read and filter a file the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fellrec.data.readers import DATA_FORMATS, FORMATS, read_dataset
from fellrec.data.schema import RawDataset

log = logging.getLogger(__name__)

#: Reader options that name files (expanded like ``path``).
PATH_OPTIONS = frozenset({"meta", "items", "users"})


@dataclass(frozen=True)
class DatasetSettings:
    """Where the interactions come from.

    Attributes:
        format: One of synthetic, movielens, recbole, amazon, tabular.
        path: movielens/recbole: the extracted directory; amazon: the reviews file; tabular: the
            interactions file (CSV/TSV/Parquet). Not used by synthetic, nor with silos (each
            silo's path takes its place).
        options: Extra reader options: amazon ``meta``; tabular ``items``, ``users`` and column
            names; synthetic ``num_users``, ``num_items``, ``num_categories``; recbole ``name``.
        min_rating: Keep only interactions rated at least this (when the source has ratings).
        kcore: Iterative k-core filter on users and items (0 or 1: off; the reference uses 5).
    """

    format: str = "synthetic"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    min_rating: float | None = None
    kcore: int = 0


def check_format(fmt: str) -> None:
    """Refuse a ``data.dataset.format`` that is not registered, listing those that are.

    Raises:
        ValueError: Naming the setting and the known formats.
    """
    if fmt not in FORMATS:
        raise ValueError(
            f"data.dataset.format={fmt!r} is unknown; choose from {', '.join(FORMATS)}"
        )


def read_raw(settings: DatasetSettings, seed: int, interactions_only: bool = False) -> RawDataset:
    """Read the configured source into a :class:`RawDataset`.

    Args:
        settings: The format, path and reader options.
        seed: Seed of the synthetic generator.
        interactions_only: Skip the format's item file (a silo's items come from the catalog).

    Raises:
        ValueError: For an unknown format, a missing ``path``, or options the reader does not
            take, naming the setting.
    """
    fmt = settings.format
    check_format(fmt)
    data_format = DATA_FORMATS[fmt]
    # The reader's argument the pipeline fills: the path, or the seed of a generated format.
    filled, source = (data_format.path_option, "data.dataset.path")
    if filled is None:
        filled, source = "seed", "data.seed"
    if filled in settings.options:
        raise ValueError(f"data.dataset.options.{filled} is set by {source}; remove the option")
    if data_format.path_option is None:
        return read_dataset(fmt, seed=seed, **settings.options)
    if not settings.path:
        raise ValueError(f"data.dataset.path is required for data.dataset.format={fmt!r}")
    path = str(Path(settings.path).expanduser())
    options = dict(settings.options)
    for key in PATH_OPTIONS.intersection(options):
        value = options[key]
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"data.dataset.options.{key} must be a file path, got {type(value).__name__} "
                f"{value!r} (quote it in YAML if it contains ': ')"
            )
        if value is not None:
            options[key] = str(Path(value).expanduser())
    if interactions_only and data_format.skips_item_file:
        options["interactions_only"] = True
    item_files = [options.get(option) for option in data_format.item_file_options]
    if data_format.missing_items_warning and not any(item_files) and not interactions_only:
        log.warning(data_format.missing_items_warning)
    return read_dataset(fmt, **{data_format.path_option: path}, **options)


def filter_min_rating(raw: RawDataset, min_rating: float | None) -> RawDataset:
    """Keep the interactions rated at least ``min_rating`` (all when it is ``None``).

    Raises:
        ValueError: If ``min_rating`` is set but the source has no ratings.
    """
    if min_rating is None:
        return raw
    if "rating" not in raw.interactions.columns:
        raise ValueError(
            f"data.dataset.min_rating is set but {raw.name} has no ratings; remove the setting"
        )
    keep = raw.interactions["rating"] >= min_rating
    return dataclasses.replace(raw, interactions=raw.interactions[keep])


def option_paths(settings: DatasetSettings) -> list[str]:
    """The files the reader options name (``meta``, ``items``, ``users``)."""
    return [v for k, v in settings.options.items() if k in PATH_OPTIONS and isinstance(v, str)]


def files_fingerprint(paths: Iterable[str], resolve: bool = False) -> list[Any]:
    """Path, size and modification time of every file under ``paths``, for cache keys.

    Args:
        paths: Files or directories (a directory counts every file below it).
        resolve: Record absolute paths, so that the same relative path read from two working
            directories (two silos' nodes) never shares a key.
    """
    found: list[Any] = []
    for raw in paths:
        root = Path(str(raw)).expanduser()
        if resolve:
            root = root.resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        found += [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]
    return found
