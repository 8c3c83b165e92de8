"""Write a simulated partition as silo files: one directory per client, the catalog, a config.

``fellrec data export-silos`` runs this, so a user can move from a simulation (k-means, iid,
Dirichlet or attribute clients) to a deployment with the same clients: every client directory holds
only its own users' interactions (all of them: train, validation and test, after the central
filters), ``catalog.csv`` holds the items in index order, and ``silos.yaml`` is a config overlay
under which ``fellrec fit --config <original> --config silos.yaml`` simulates exactly those silos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fellrec.data.catalog import DEFAULT_CATEGORY_COLUMN, write_catalog_table
from fellrec.data.pipeline import FederatedData

log = logging.getLogger(__name__)

#: Files the export writes inside its directory.
CATALOG_FILE = "catalog.csv"
OVERLAY_FILE = "silos.yaml"
INTERACTIONS_FILE = "interactions.csv"
#: Columns of the exported interaction tables (the tabular reader's defaults).
USER_COLUMN, ITEM_COLUMN, TIME_COLUMN = "user_id", "item_id", "timestamp"


def client_directory(output: Path, client: int) -> Path:
    """The directory of client ``client``'s silo."""
    return output / f"client_{client}"


@dataclass(frozen=True)
class ExportedSilos:
    """What :func:`export_silos` wrote.

    Attributes:
        overlay: The ``silos.yaml`` config overlay.
        silos: Each client's interaction file, by client.
        users: Users per client.
        interactions: Interactions per client.
    """

    overlay: Path
    silos: list[Path]
    users: list[int]
    interactions: list[int]


def check_output(output: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory unless ``force``.

    Raises:
        FileExistsError: Naming the directory and how to override.
    """
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output}: is a file, not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise FileExistsError(
            f"--output {output}: the directory is not empty; choose a new one, or pass --force "
            f"to overwrite its {CATALOG_FILE}, {OVERLAY_FILE} and client_<i>/ files"
        )


def export_silos(data: FederatedData, output: Path, force: bool = False) -> ExportedSilos:
    """Write each client's users' interactions, the catalog and the config overlay.

    Interactions are written in the data's chronological order (equal timestamps in file order),
    so a silo read back keeps every user's sequence exactly.

    Args:
        data: The prepared data of a simulation (any partition).
        output: The directory to write (created if missing). Paths in the overlay are written
            as ``output`` is given (relative paths resolve against the working directory).
        force: Overwrite the files of an earlier export in a non-empty ``output``.

    Returns:
        What was written.

    Raises:
        FileExistsError: If ``output`` is not empty and ``force`` is not set.
    """
    check_output(output, force)
    output.mkdir(parents=True, exist_ok=True)
    dataset = data.dataset
    separator = write_catalog_table(
        output / CATALOG_FILE, list(dataset.item_ids), dataset.titles, dataset.categories
    )
    user_clients = data.assignment[dataset.users]  # (num_interactions,)
    silos, users, interactions = [], [], []
    for client in range(data.num_clients):
        rows = np.flatnonzero(user_clients == client)
        directory = client_directory(output, client)
        directory.mkdir(exist_ok=True)
        path = directory / INTERACTIONS_FILE
        pd.DataFrame(
            {
                USER_COLUMN: dataset.user_ids[dataset.users[rows]],
                ITEM_COLUMN: dataset.item_ids[dataset.items[rows]],
                TIME_COLUMN: dataset.timestamps[rows],
            }
        ).to_csv(path, index=False)
        silos.append(path)
        users.append(int(np.count_nonzero(data.assignment == client)))
        interactions.append(len(rows))
    overlay = output / OVERLAY_FILE
    overlay.write_text(
        "# Written by `fellrec data export-silos`: with the original config first,\n"
        f"#   fellrec fit --config <original> --config {overlay}\n"
        "# simulates these silos (client i = data.silos[i]).\n"
        + yaml.safe_dump(silo_overlay(data, output, silos, separator), sort_keys=False)
    )
    return ExportedSilos(overlay, silos, users, interactions)


def silo_overlay(
    data: FederatedData, output: Path, silos: list[Path], separator: str
) -> dict[str, Any]:
    """The config overlay that reads the exported silos.

    The format becomes tabular with the export's columns; ``min_rating`` and the k-core are off
    (the files hold what the central filters kept); the split is the original's, and the temporal
    split's cut-offs are the ones it used, so every silo cuts at the same times.
    """
    section: dict[str, Any] = {
        "dataset": {
            "format": "tabular",
            "path": None,
            "options": {
                "user_column": USER_COLUMN,
                "item_column": ITEM_COLUMN,
                "time_column": TIME_COLUMN,
                "category_column": DEFAULT_CATEGORY_COLUMN,
                "category_separator": separator,
            },
            "min_rating": None,
            "kcore": 0,
        },
        "catalog": str(output / CATALOG_FILE),
        "silos": [str(path) for path in silos],
        "num_clients": data.num_clients,
        # The split the export was made with (it may come from a command-line override).
        "split": data.split.method,
    }
    if data.split.cutoffs is not None:
        section["temporal_cutoffs"] = [int(c) for c in data.split.cutoffs]
    return {"data": section}
