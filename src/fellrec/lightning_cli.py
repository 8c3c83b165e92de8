"""The LightningCLI of ``fellrec fit|validate|test|predict``: its class, its defaults, its output.

:func:`make_cli` builds it over :class:`~fellrec.training.host.federated_module.FederatedModule` and
:class:`~fellrec.training.batches.datamodule.FederatedDataModule`, with the ``loop:``
(:class:`~fellrec.training.rounds.loop.FederatedLoop`) and ``checkpoint:`` (``ModelCheckpoint``)
sections always present. The ``fellrec`` dispatcher (:mod:`fellrec.cli`) runs it for those
subcommands; ``fellrec compare`` runs it once per strategy; a deployed client or server builds it to
read a run's config (``run=False``); the recorded config schema
(:mod:`fellrec.preflight.schema_builder`) is read from its parser.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fellrec.config_errors import check_config_files, explain_argument_error, parser_keys
from fellrec.metrics.headline import result_headline, slice_lines
from fellrec.models.process_transport import BlockServerError
from fellrec.reporting.run_reporter import RunReporter
from fellrec.run_directory import check_writable, holds_run_record, refuse_occupied
from fellrec.run_loggers import into_run_directory, with_run_csv_logger
from fellrec.saved_config import RunConfigSaver
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.host.process_group import check_process_launch
from fellrec.training.probes.privacy_probe import PrivacyProbe
from fellrec.training.rounds.interruption import interruption_notice, stopped_at
from fellrec.training.rounds.loop import FederatedLoop
from fellrec.training.rounds.progress import FederatedProgressBar, FederatedProgressLog
from fellrec.typed_settings import restore_typed_settings, typed_model_leaves

log = logging.getLogger(__name__)

#: The subcommands LightningCLI runs.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Subcommands that evaluate a saved run; they write into a new directory inside the run's.
EVALUATION_SUBCOMMANDS = ("validate", "test")
#: Environment variable carrying the evaluation directory to the other processes of a run.
EVALUATION_DIR_VARIABLE = "FELLREC_EVALUATION_DIR"
#: Signals a scheduler (SIGTERM) or a person (SIGINT) stops a run with; exit status 128 + number.
INTERRUPTING_SIGNALS = {"SIGTERM": int(signal.SIGTERM), "SIGINT": int(signal.SIGINT)}


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
        resuming = self.subcommand == "fit" and bool(config.get("ckpt_path"))
        in_place = resuming and holds_run_record(Path(root))
        if self.subcommand == "fit":
            refuse_occupied(Path(root), Path(config.checkpoint.dirpath), resuming=resuming)
        config.trainer.logger = with_run_csv_logger(config.trainer.logger, log_dir)
        for notice in into_run_directory(config.trainer.logger, log_dir, in_place):
            log.warning(notice)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add the progress display (unless the config sets one) and the run's reporting.

        On a terminal that is a bar; when stderr is a file (CI, nohup, Slurm), where a bar's
        carriage-return redraws pile up, it is an occasional log line. A strategy that spawns or
        forks its processes is refused (:func:`check_process_launch`).
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
        trainer = super().instantiate_trainer(**kwargs)
        check_process_launch(trainer, config.get("strategy"))
        return trainer

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

    def _parse_ckpt_path(self) -> None:
        """Merge a checkpoint's hyperparameters, but let the command line's ``--model.*`` win.

        Lightning parses ``ckpt_path``'s saved hyperparameters over the whole ``model`` section, so
        ``fellrec test --ckpt_path run/checkpoints/round-2.ckpt --model.items.cold_start
        text_ridge`` would silently evaluate with the checkpoint's value (and ``--ckpt_path
        last``, which is no file yet at parse time, with the flag's): the settings the user typed
        are put back after the merge (:func:`restore_typed_settings`), with a notice where the
        checkpoint said otherwise.
        """
        subcommand = self.config.get("subcommand")
        leaves = typed_model_leaves(self.command_args)
        if not subcommand or not leaves:
            super()._parse_ckpt_path()
            return
        typed = deepcopy(self.config[subcommand])
        super()._parse_ckpt_path()
        for key, was, now in restore_typed_settings(typed, self.config[subcommand], leaves):
            log.info("%s: the command line's %r replaces the checkpoint's %r", key, now, was)

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
