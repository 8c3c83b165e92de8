"""A run's config read by the commands that do not train it: some sections checked, others kept.

``fellrec cost|attack|baselines`` read a run's ``model:`` and ``data:`` sections and its
``trainer:`` section as a plain mapping (they take ``default_root_dir`` and ``precision`` from it);
``fellrec data stats|export-silos`` read its ``data:`` section only. Every other section of the
``fellrec fit`` schema (:mod:`fellrec.lightning_cli`) is accepted and ignored, so one config file
serves every command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule

#: The top-level sections of a ``fellrec fit`` config, in the order the parsers list them
#: (``weights_only``, how ``ckpt_path`` is loaded, is printed by Lightning 2.6 and later; an older
#: Lightning's config simply leaves it out).
FIT_SECTIONS = (
    "model",
    "data",
    "trainer",
    "loop",
    "checkpoint",
    "seed_everything",
    "ckpt_path",
    "weights_only",
)
#: What a command that reads a run without training it checks: ``fellrec cost|attack|baselines``.
RUN_SECTIONS = ("model", "data", "trainer")
#: What a command about the data alone checks: ``fellrec data stats|export-silos``.
DATA_SECTIONS = ("data",)
#: The sections that can be read (the others of :data:`FIT_SECTIONS` can only be ignored).
READABLE_SECTIONS = frozenset(RUN_SECTIONS)


def config_parser(
    prog: str, description: str, sections: Sequence[str] = RUN_SECTIONS
) -> ArgumentParser:
    """A parser of the fit YAML schema that checks ``sections`` and ignores the others.

    Commands build on it: add their own flags, then call :func:`instantiate_run_config` (or
    :func:`instantiate` for the data section alone).

    Args:
        prog: The command, as its usage and errors name it (e.g. ``"fellrec cost"``).
        description: What the command does (its ``--help``).
        sections: Among :data:`READABLE_SECTIONS`: ``model`` and ``data`` are checked as their
            classes' arguments, ``trainer`` is read as a mapping.

    Raises:
        ValueError: A section that cannot be read.
    """
    unreadable = sorted(set(sections) - READABLE_SECTIONS)
    if unreadable:
        raise ValueError(f"config sections {unreadable} cannot be read here")
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a fellrec YAML config")
    read = [section for section in FIT_SECTIONS if section in sections]
    if "model" in read:
        parser.add_class_arguments(FederatedModule, "model")
    if "data" in read:
        parser.add_class_arguments(FederatedDataModule, "data")
    if "trainer" in read:
        # A dict (not Any), so that `--trainer.key value` merges into the YAML's trainer section
        # (the commands read default_root_dir and precision from it) instead of replacing it.
        parser.add_argument("--trainer", type=dict | None, default=None, help="the trainer section")
    for section in FIT_SECTIONS:
        if section not in read:
            parser.add_argument(f"--{section}", type=Any, default=None, help="(ignored here)")
    return parser


def instantiate(parser: ArgumentParser, config: Namespace) -> Namespace:
    """The parsed config with its classes made (nothing is loaded: their setup does that)."""
    make = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return make(config)


def instantiate_run_config(
    parser: ArgumentParser, config: Any
) -> tuple[FederatedModule, FederatedDataModule]:
    """The (not yet set up) model and data module of a parsed config; nothing is loaded."""
    objects = instantiate(parser, config)
    return objects.model, objects.data
