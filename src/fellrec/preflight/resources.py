"""Checks of what a config points at: the data, the backbone, the run's directory.

Each runs the same code the run will (the data readers and the pipeline's first stages, the
backbone's resolution), without loading a model: a missing file, a broken CSV line, a backbone
that is nowhere, or a directory that cannot be written fails before the heavy imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fellrec.data.pipeline import cached_data_path, check_silo_sources, load_checked_dataset
from fellrec.models.backbone_source import check_backbone, num_layers
from fellrec.models.split_plan import plan_split
from fellrec.preflight.command_line import section
from fellrec.preflight.settings import pipeline_settings, setting
from fellrec.run_directory import check_writable, refuse_occupied

#: ``ckpt_path`` values Lightning resolves itself (not file paths).
SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


def check_data(values: Mapping[str, Any]) -> None:
    """The data files exist and read, and hold a user for every client.

    With the run's own readers (which name the missing file, or the line or column that does not
    read). Data prepared before with the same settings and unchanged files (in the cache) is not
    read again: it was read and checked then.

    Raises:
        FileNotFoundError: A data file that does not exist.
        ValueError: A required path that is not set, data that does not read, or fewer users
            than clients.
    """
    settings = pipeline_settings(values)
    if cached_data_path(settings, setting(values, "data.cache_dir")).exists():
        return
    if settings.uses_silos:
        check_silo_sources(settings)
    else:
        load_checked_dataset(settings)


def check_model_source(values: Mapping[str, Any]) -> None:
    """The backbone can be loaded here, and split as configured (when its depth is known).

    Raises:
        ValueError: Naming ``model.backbone`` (neither an alias, a directory nor a reachable hub
            name) or ``model.k_front``/``model.k_back`` (too many blocks for the model).
    """
    directory = check_backbone(str(setting(values, "model.backbone")))
    split = setting(values, "model.split_execution")
    if directory is None or split is False or str(split).lower() == "false":
        return
    layers = num_layers(directory)
    if layers is not None:
        plan_split(
            layers, int(setting(values, "model.k_front")), int(setting(values, "model.k_back"))
        )


def check_run_directory(config: Mapping[str, Any], subcommand: str) -> None:
    """The run's directory can be written, holds no other run (fit), and its checkpoint exists.

    Raises:
        OSError: An unwritable ``trainer.default_root_dir`` or ``checkpoint.dirpath``, or a
            ``ckpt_path`` that does not exist.
        ValueError: A new fit into a directory holding another run's results or checkpoints.
    """
    trainer, checkpoint = section(config, "trainer"), section(config, "checkpoint")
    root = Path(str(trainer.get("default_root_dir") or os.getcwd()))
    check_writable(root, "trainer.default_root_dir")
    dirpath = checkpoint.get("dirpath")
    if dirpath:
        check_writable(Path(str(dirpath)), "checkpoint.dirpath")
    checkpoints = Path(str(dirpath)) if dirpath else None
    ckpt_path = config.get("ckpt_path")
    if subcommand == "fit":
        refuse_occupied(root, checkpoints, resuming=bool(ckpt_path))
    special = str(ckpt_path) in SPECIAL_CHECKPOINTS
    if ckpt_path and not special and not Path(str(ckpt_path)).expanduser().is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint file: {ckpt_path}")
