"""Dataset readers: each turns files in one source format into a :class:`RawDataset`.

Use :func:`read_dataset` to pick a reader by name (as configs do), or call a reader directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fellrec.data.readers.amazon import read_amazon
from fellrec.data.readers.movielens import read_movielens
from fellrec.data.readers.recbole import read_recbole
from fellrec.data.readers.tabular import read_tabular
from fellrec.data.schema import RawDataset

#: Reader of each format name.
READERS: dict[str, Callable[..., RawDataset]] = {
    "movielens": read_movielens,
    "recbole": read_recbole,
    "amazon": read_amazon,
    "tabular": read_tabular,
}

__all__ = [
    "READERS",
    "read_amazon",
    "read_dataset",
    "read_movielens",
    "read_recbole",
    "read_tabular",
]


def read_dataset(format: str, **options: Any) -> RawDataset:
    """Read a dataset with the reader registered for ``format``.

    Args:
        format: One of the keys of :data:`READERS`.
        **options: Keyword arguments of that reader, e.g. ``path=`` for ``"movielens"``.

    Returns:
        The dataset the reader returns.

    Raises:
        ValueError: If ``format`` is unknown, an option is not one the reader takes, or a required
            option is missing; the message names them and lists the accepted options.
    """
    try:
        reader = READERS[format]
    except KeyError:
        raise ValueError(
            f"unknown dataset format {format!r}; known formats: {', '.join(sorted(READERS))}"
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
