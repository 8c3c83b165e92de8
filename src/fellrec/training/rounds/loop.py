"""FederatedLoop: Lightning's hooks mapped onto the round engine.

One Lightning epoch is one federated round. The rounds themselves (learning-rate scales,
aggregation, per-client model selection, the history and its log line, the test summary, the
results' schema and the resume state) are the :class:`~fellrec.federation.engine.RoundEngine`'s,
the same engine a deployed server drives; this callback only says when: a round starts at the
epoch start, is aggregated before validation (or at the epoch end without one), selected at the
validation end and tested with each client's selected parameters.

Beside it lives what is not running the rounds: the strategy's resolution
(:mod:`~fellrec.training.rounds.run_strategy`), and in :mod:`fellrec.training.records` what
fitting records first (``run_start``), a resumed run's record in its loggers (``resumed_record``)
and the run's outputs (``results``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from fellrec.federation.engine import RoundEngine
from fellrec.federation.selection import ModelSelection
from fellrec.federation.strategies import Local, Strategy
from fellrec.training.batches.datamodule import federated_datamodule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.host.process_group import check_process_launch
from fellrec.training.records.accounting import resource_summary_of
from fellrec.training.records.results import (
    run_config,
    run_directory,
    run_sections,
    write_run_outputs,
)
from fellrec.training.records.resumed_record import continue_record
from fellrec.training.records.round_metrics import (
    aggregation_metrics,
    logged_test_metrics,
    validation_metrics,
)
from fellrec.training.records.run_start import record_fit_start
from fellrec.training.rounds.module_host import ModuleHost
from fellrec.training.rounds.run_strategy import DEFAULT_STRATEGY, resolve_strategy

log = logging.getLogger(__name__)


class FederatedLoop(Callback):
    """Runs a federation's rounds in a Lightning fit, through the round engine.

    Args:
        strategy: The federated strategy the rounds run (default: FELLRec's dynamic balance).
        selection_metric: Validation metric for per-client model selection and the ``best_round``
            (logged overall as ``val/<metric>`` for early stopping and checkpointing).
        write_results: Write ``results.json`` and the per-client adapters after testing.
        min_eval_users: Warn when a client has fewer validation or test users than this: its
            metrics (and its selected round) are noise-dominated; ``results.json`` carries
            bootstrap confidence intervals over users to show how much.
        bootstrap_resamples: Resamples of the test users for those intervals (0: none).
    """

    def __init__(
        self,
        strategy: Strategy = DEFAULT_STRATEGY,
        selection_metric: str = "ndcg@10",
        write_results: bool = True,
        min_eval_users: int = 20,
        bootstrap_resamples: int = 1000,
    ) -> None:
        if min_eval_users < 0:
            raise ValueError(f"loop.min_eval_users must be >= 0, got {min_eval_users}")
        if bootstrap_resamples < 0:
            raise ValueError(f"loop.bootstrap_resamples must be >= 0, got {bootstrap_resamples}")
        #: As configured (``loop.strategy``); :meth:`setup` settles it against the module.
        self.configured_strategy = strategy
        self._strategy = strategy
        self.selection_metric = selection_metric
        self.write_results = write_results
        self.min_eval_users = min_eval_users
        self.bootstrap_resamples = bootstrap_resamples
        #: The engine, built once the module knows its clients.
        self.engine: RoundEngine | None = None
        #: A checkpoint's engine state, restored before the module was built.
        self._restored: dict[str, Any] | None = None
        #: Rounds held by the newest checkpoint this process saved or resumed from.
        self.checkpointed_rounds = 0
        #: ``results.json`` as last written (reporting reads it).
        self.results_path: Path | None = None
        self._record_continued = False

    # ------------------------------------------------------------------ the engine
    @staticmethod
    def _module(pl_module: L.LightningModule) -> FederatedModule:
        if not isinstance(pl_module, FederatedModule):
            raise TypeError("FederatedLoop drives a FederatedModule")
        return pl_module

    def _engine(self, module: FederatedModule) -> tuple[RoundEngine, ModuleHost]:
        """The engine for the module's clients (built on first use) and the module as its host."""
        if self.engine is None or self.engine.held != list(module.held_clients):
            self.engine = RoundEngine(
                self.strategy,
                module.num_clients,
                list(module.held_clients),
                base_lr=module.lr,
                selection_metric=self.selection_metric,
                bootstrap_resamples=self.bootstrap_resamples,
                announce=self._announce,
                warn=rank_zero_warn,
            )
            if self._restored is not None:
                self.engine.load_state_dict(self._restored)
                self._restored = None
        return self.engine, ModuleHost(module)

    def _announce(self, line: str) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.is_global_zero:  # one line per round, not per process
            log.info(line)

    @property
    def strategy(self) -> Strategy:
        """The strategy the rounds run (settled by :meth:`setup`)."""
        return self._strategy

    @property
    def rounds_run(self) -> int:
        """Rounds trained so far."""
        if self.engine is None:
            return int(self._restored["rounds_run"]) if self._restored else 0
        return self.engine.rounds_run

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rounds' records."""
        if self.engine is None:
            return list(self._restored["history"]) if self._restored else []
        return self.engine.history

    @property
    def selection(self) -> ModelSelection | None:
        """Per-client model selection on validation (None before the clients are known)."""
        return self.engine.selection if self.engine is not None else None

    @property
    def test_summary(self) -> dict[str, Any] | None:
        """The last test's summary."""
        return self.engine.test_summary if self.engine is not None else None

    # ------------------------------------------------------------------ fit
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Settle the strategy, tell the data whether it pools clients, check the metric.

        A trainer built in Python with a spawning or forking strategy is refused here (the
        command line refuses it earlier, when it builds the trainer).
        """
        check_process_launch(trainer)
        self._trainer = trainer
        module = self._module(pl_module)
        datamodule = federated_datamodule(trainer)
        # A host of one client's data (a silo) trains it locally: the server aggregates.
        host = Local() if datamodule.client is not None else None
        self._strategy = resolve_strategy(self.configured_strategy, module.legacy_strategy, host)
        pooled = self.strategy.pools_clients
        datamodule.set_round_batching(replace(datamodule.round_batching, pooled=pooled))
        if self.selection_metric not in module.eval_names:
            raise ValueError(
                f"selection_metric={self.selection_metric!r} is unknown; "
                f"choose from {', '.join(module.eval_names)}"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the user -> client map next to the run."""
        module = self._module(pl_module)
        self._engine(module)
        self._record_continued = False
        record_fit_start(trainer, resource_summary_of(module.resource_facts()), self.min_eval_users)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Continue the record of a resumed run: every round it holds, in every logger.

        Called once the checkpoint is fully restored. ``metrics.csv`` keeps its rows of the
        checkpoint's rounds (and drops those of an unfinished round, which runs again); loggers
        that start a new record on every run (wandb) get the finished rounds replayed from the
        history, so a resumed run's record equals the uninterrupted one's.
        """
        engine, _ = self._engine(self._module(pl_module))
        self.checkpointed_rounds = engine.rounds_run
        self._record_continued = True
        if trainer.is_global_zero:
            continue_record(trainer.loggers, engine.history, engine.rounds_run)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run with no round left to train (stopped before its test) continues too."""
        if not self._record_continued:
            self.on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start a round: per-client learning rates, optimizer resets, round statistics."""
        engine, host = self._engine(self._module(pl_module))
        engine.start_round(host, trainer.current_epoch)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Aggregate first: validation already evaluates the round's personalized adapters."""
        engine, host = self._engine(self._module(pl_module))
        if engine.training and not trainer.sanity_checking:
            self._aggregate(trainer, engine, host)
        engine.start_validation()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Aggregate here when validation did not run this round."""
        engine, host = self._engine(self._module(pl_module))
        if engine.training:
            self._aggregate(trainer, engine, host)

    def _aggregate(self, trainer: L.Trainer, engine: RoundEngine, host: ModuleHost) -> None:
        record = engine.finish_training(host, step=trainer.global_step)
        host.module.log_dict(
            aggregation_metrics(record), on_step=False, on_epoch=True, sync_dist=True
        )

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per-client selection, overall metric for early stopping, balance logging."""
        if trainer.sanity_checking:
            return
        engine, host = self._engine(self._module(pl_module))
        summary = engine.finish_validation(host, fitting=trainer.state.fn == TrainerFn.FITTING)
        host.module.log_dict(
            validation_metrics(summary), on_step=False, on_epoch=True, sync_dist=True
        )

    # ------------------------------------------------------------------ test
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate each client with its selected (best validation) adapter."""
        engine, host = self._engine(self._module(pl_module))
        engine.start_test(host)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize the test metrics, log them and write the run's outputs."""
        module = self._module(pl_module)
        engine, host = self._engine(module)
        summary = engine.finish_test(host)
        module.log_dict(logged_test_metrics(summary), sync_dist=True)
        directory = run_directory(trainer)  # a collective: every process must ask
        # Sharded adapters are gathered by every process at once; one of them writes.
        gathered = module.gathered_adapters()
        self.results_path = None
        if self.write_results and trainer.is_global_zero:
            self.results_path = write_run_outputs(
                directory,
                module,
                engine,
                summary,
                config=run_config(directory, trainer, module),
                resources=resource_summary_of(module.resource_facts()),
                sections=run_sections(trainer, module),
                gathered_adapters=gathered,
            )
            log.info("results written to %s", self.results_path)

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Remember how many rounds the newest checkpoint holds (for the interruption notice)."""
        self.checkpointed_rounds = self.rounds_run

    def state_dict(self) -> dict[str, Any]:
        """The engine's state: everything a resumed run needs."""
        if self.engine is None:
            return dict(self._restored) if self._restored else {"rounds_run": 0, "history": []}
        return self.engine.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (into the engine once it is built)."""
        if "lr_scale" not in state_dict:
            return  # a checkpoint saved before any round
        if self.engine is None:
            self._restored = dict(state_dict)
        else:
            self.engine.load_state_dict(state_dict)
