"""Dataset readers, and the one registry of the formats ``data.dataset.format`` names.

Each reader turns files in one source format into a :class:`RawDataset`. :data:`DATA_FORMATS`
holds, per format name, the reader and what the pipeline needs to know to call it (which argument
``data.dataset.path`` fills, which options name item files); everything else that lists formats
(:data:`FORMATS`, the config checks, the silo checks) reads it. Use :func:`read_dataset` to pick a
reader by name (as configs do), or call a reader directly. ``CONTRIBUTING.md`` ("Add a data
format") says how to add one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, KeysView
from dataclasses import dataclass
from typing import Any

from fellrec.data.readers.amazon import read_amazon
from fellrec.data.readers.movielens import read_movielens
from fellrec.data.readers.recbole import read_recbole
from fellrec.data.readers.tabular import read_tabular
from fellrec.data.schema import RawDataset
from fellrec.data.synthetic import generate_synthetic


@dataclass(frozen=True)
class DataFormat:
    """A source format: its reader and how a config's ``data.dataset`` settings reach it.

    Attributes:
        name: The ``data.dataset.format`` value.
        reader: Returns the dataset from keyword arguments: ``data.dataset.options``, plus
            ``path_option`` (or ``seed`` for a generated format).
        path_option: The reader's argument that ``data.dataset.path`` fills (``None``: the
            format reads no files; its reader takes ``seed=`` from ``data.seed`` instead, and it
            cannot hold silos).
        item_file_options: Reader options that name item files. With silos the items come from
            the catalog (``data.catalog``), so these are refused there.
        skips_item_file: The reader reads an item file unless passed ``interactions_only=True``
            (a silo's items come from the catalog).
        missing_items_warning: Logged when a run reads this format's items but no option of
            ``item_file_options`` is set: what the recommender loses.
    """

    name: str
    reader: Callable[..., RawDataset]
    path_option: str | None = "path"
    item_file_options: tuple[str, ...] = ()
    skips_item_file: bool = False
    missing_items_warning: str | None = None


#: Every format by name, in the order errors list them: the one registry of formats.
DATA_FORMATS: dict[str, DataFormat] = {
    data_format.name: data_format
    for data_format in (
        DataFormat("synthetic", generate_synthetic, path_option=None),
        DataFormat("movielens", read_movielens, skips_item_file=True),
        DataFormat("recbole", read_recbole, skips_item_file=True),
        DataFormat(
            "amazon",
            read_amazon,
            path_option="reviews",
            item_file_options=("meta",),
            missing_items_warning=(
                "data: no data.dataset.options.meta for the Amazon reviews; item ids stand in for "
                "titles, which gives a text recommender almost nothing to read"
            ),
        ),
        DataFormat(
            "tabular", read_tabular, path_option="interactions", item_file_options=("items",)
        ),
    )
}
#: The format names: a live view of :data:`DATA_FORMATS` (a format registered later is in it).
FORMATS: KeysView[str] = DATA_FORMATS.keys()

__all__ = [
    "DATA_FORMATS",
    "FORMATS",
    "DataFormat",
    "read_amazon",
    "read_dataset",
    "read_movielens",
    "read_recbole",
    "read_tabular",
    "register_format",
    "unregister_format",
]


def register_format(data_format: DataFormat) -> None:
    """Make ``data_format`` readable as ``data.dataset.format: <name>``.

    Raises:
        ValueError: If a format of that name is registered already.
    """
    if data_format.name in DATA_FORMATS:
        raise ValueError(f"a data format named {data_format.name!r} is registered already")
    DATA_FORMATS[data_format.name] = data_format


def unregister_format(name: str) -> None:
    """Forget the format ``name`` (a test's toy format, say).

    Raises:
        KeyError: If no format of that name is registered.
    """
    del DATA_FORMATS[name]


def read_dataset(format: str, **options: Any) -> RawDataset:
    """Read a dataset with the reader registered for ``format``.

    Args:
        format: One of the keys of :data:`DATA_FORMATS`.
        **options: Keyword arguments of that reader, e.g. ``path=`` for ``"movielens"``.

    Returns:
        The dataset the reader returns.

    Raises:
        ValueError: If ``format`` is unknown, an option is not one the reader takes, or a required
            option is missing; the message names them and lists the accepted options.
    """
    try:
        reader = DATA_FORMATS[format].reader
    except KeyError:
        raise ValueError(
            f"unknown dataset format {format!r}; known formats: {', '.join(sorted(FORMATS))}"
        ) from None
    _check_options(format, reader, options)
    return reader(**options)


def _check_options(format: str, reader: Callable[..., RawDataset], options: dict[str, Any]) -> None:
    """Raise ValueError naming unexpected or missing options before calling ``reader``."""
    parameters = inspect.signature(reader).parameters
    accepted = ", ".join(parameters)
    unexpected = sorted(set(options) - set(parameters))
    if unexpected:
        raise ValueError(
            f"{format} reader got unexpected option(s) {', '.join(map(repr, unexpected))}; "
            f"it accepts: {accepted}"
        )
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in options
    ]
    if missing:
        raise ValueError(
            f"{format} reader needs option(s) {', '.join(map(repr, missing))}; "
            f"it accepts: {accepted}"
        )
