"""FederatedLoop: the round boundaries of a federated run, as a Lightning callback.

One Lightning epoch is one federated round. At each round start the loop sets every client's
learning rate (the strategy's heating), at each round end it collects the adapters and losses, calls
the strategy and loads every client's new adapter, then it evaluates each client on its own users,
keeps each client's best adapter by validation (per-client model selection) and logs the balance
across clients. Its state is plain values and tensors, saved in checkpoints, so a run resumes
exactly.

Beside it lives what is not running the rounds, in ``fellrec.training``: the strategy's resolution
(``run_strategy``), what fitting records first (``run_start``), a resumed run's record in its
loggers (``resumed_record``), the test's summary (``evaluation_summary``) and the run's outputs
(``results``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from fellrec.federation.protocol import round_inputs, round_record
from fellrec.federation.selection import ModelSelection
from fellrec.federation.strategies import Local, Strategy
from fellrec.metrics.summary import summarize
from fellrec.training.datamodule import federated_datamodule
from fellrec.training.evaluation_summary import logged_test_metrics, summarize_test
from fellrec.training.federated_module import FederatedModule
from fellrec.training.results import RunRecord, run_directory, run_sections, write_run_outputs
from fellrec.training.resumed_record import continue_record
from fellrec.training.round_metrics import aggregation_metrics, validation_metrics
from fellrec.training.run_start import record_fit_start
from fellrec.training.run_strategy import DEFAULT_STRATEGY, resolve_strategy

log = logging.getLogger(__name__)


class FederatedLoop(Callback):
    """Runs rounds, aggregation, per-client learning rates, selection and balance logging.

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
        self.rounds_run = 0
        self.lr_scale: torch.Tensor | None = None
        #: Per-client model selection on validation (built once the clients are known).
        self.selection: ModelSelection | None = None
        self.history: list[dict[str, Any]] = []
        #: Rounds held by the newest checkpoint this process saved or resumed from.
        self.checkpointed_rounds = 0
        #: The last test's summary and the ``results.json`` it was written to (reporting reads
        #: them: :class:`fellrec.reporting.run_reporter.RunReporter`).
        self.test_summary: dict[str, Any] | None = None
        self.results_path: Path | None = None
        self._pending = False
        self._record_continued = False
        self._round_started = 0.0
        self._validation_started = 0.0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _module(pl_module: L.LightningModule) -> FederatedModule:
        if not isinstance(pl_module, FederatedModule):
            raise TypeError("FederatedLoop drives a FederatedModule")
        return pl_module

    def _ensure_state(self, module: FederatedModule) -> None:
        n = module.num_slots
        if self.lr_scale is None or len(self.lr_scale) != n:
            self.lr_scale = torch.ones(n, dtype=torch.float64)
        if self.selection is None or len(self.selection.best_scores) != module.num_clients:
            held = [module.slot_client(s) for s in range(n)]
            self.selection = ModelSelection(module.num_clients, held)

    @property
    def strategy(self) -> Strategy:
        """The strategy the rounds run (settled by :meth:`setup`)."""
        return self._strategy

    # ------------------------------------------------------------------ fit
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Settle the strategy, tell the data whether it pools clients, check the metric."""
        module = self._module(pl_module)
        datamodule = federated_datamodule(trainer)
        # A host of one client's data (a silo) trains it locally: the server aggregates.
        host = Local() if datamodule.client is not None else None
        self._strategy = resolve_strategy(self.configured_strategy, module.legacy_strategy, host)
        datamodule.pool_clients = self.strategy.pools_clients
        if self.selection_metric not in module.eval_names:
            raise ValueError(
                f"selection_metric={self.selection_metric!r} is unknown; "
                f"choose from {', '.join(module.eval_names)}"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the user -> client map next to the run."""
        module = self._module(pl_module)
        self._ensure_state(module)
        self._record_continued = False
        record_fit_start(trainer, module, self.min_eval_users)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Continue the record of a resumed run: every round it holds, in every logger.

        Called once the checkpoint is fully restored. ``metrics.csv`` keeps its rows of the
        checkpoint's rounds (and drops those of an unfinished round, which runs again); loggers
        that start a new record on every run (wandb) get the finished rounds replayed from the
        history, so a resumed run's record equals the uninterrupted one's.
        """
        self.checkpointed_rounds = self.rounds_run
        self._record_continued = True
        if trainer.is_global_zero:
            continue_record(trainer.loggers, self.history, self.rounds_run)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run with no round left to train (stopped before its test) continues too."""
        if not self._record_continued:
            self.on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start a round: per-client learning rates, optimizer resets, round statistics."""
        module = self._module(pl_module)
        self._ensure_state(module)
        assert self.lr_scale is not None
        config = self.strategy.configure_round(
            trainer.current_epoch, module.num_slots, self.lr_scale
        )
        slot_configs = {
            module.slot_client(s): config.for_client(s) for s in range(module.num_slots)
        }
        module.start_round(config.round, slot_configs)
        self._pending = True
        self._round_started = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Aggregate first: validation already evaluates the round's personalized adapters."""
        if self._pending and not trainer.sanity_checking:
            self._aggregate(trainer, self._module(pl_module))
        self._validation_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Aggregate here when validation did not run this round; report the round."""
        if self._pending:
            self._aggregate(trainer, self._module(pl_module))

    def _aggregate(self, trainer: L.Trainer, module: FederatedModule) -> None:
        self._pending = False
        round_index = trainer.current_epoch
        loss_sums, examples, diverged = module.collect_round_stats()
        # Each slot (adapter) is trained by the client it belongs to; centralized training
        # tags every batch with client 0, whose slot 0 then holds all examples.
        slot_clients = torch.tensor([module.slot_client(s) for s in range(module.num_slots)])
        trained = examples > 0
        if not self.strategy.pools_clients:
            for client in slot_clients[~trained[slot_clients]].tolist():
                rank_zero_warn(f"round {round_index}: client {client} had no training example")
        for client in diverged.nonzero().flatten().tolist():
            rank_zero_warn(
                f"round {round_index}: client {client}'s loss became NaN/inf; it keeps its "
                "adapter from the round start and is left out of the aggregation"
            )
        inputs = round_inputs(
            round_index,
            module.client_parameters(),  # (S, P)
            module.round_start_parameters(),
            loss_sums[slot_clients],
            examples[slot_clients],
            diverged[slot_clients],
        )
        result = self.strategy.aggregate(inputs)
        module.load_client_parameters(result.theta, identical=self.strategy.shares_model)
        self.lr_scale = result.lr_scale.double()
        self.rounds_run = round_index + 1
        record = round_record(round_index, inputs, result, module.lr)
        record["diverged"] = diverged.nonzero().flatten().tolist()
        # Training and aggregation; validation adds `val_seconds`, `seconds` is the sum.
        record["train_seconds"] = time.perf_counter() - self._round_started
        record["step"] = trainer.global_step
        record["seconds"] = record["train_seconds"]
        self.history.append(record)
        module.log_dict(aggregation_metrics(record), on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per-client selection, overall metric for early stopping, balance logging."""
        if trainer.sanity_checking:
            return
        module = self._module(pl_module)
        self._ensure_state(module)
        assert self.selection is not None
        sums, counts, names = module.collect_eval()
        summary = summarize(sums, counts, names)
        round_index = self.rounds_run - 1
        column = names.index(self.selection_metric)
        overall = summary["overall"]
        assert isinstance(overall, dict)
        self.selection.update(
            round_index,
            sums[:, column] / counts.clamp_min(1),
            counts,
            module.client_parameters(),
            float(overall[self.selection_metric]),
        )
        validation_seconds = time.perf_counter() - self._validation_started
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self.history and self.history[-1]["round"] == round_index:
            record = self.history[-1]
            record["val"] = summary
            record["val_seconds"] = validation_seconds
            record["seconds"] = record["train_seconds"] + validation_seconds
        module.log_dict(validation_metrics(summary), on_step=False, on_epoch=True, sync_dist=True)
        balance = summary["balance"][self.selection_metric]
        scores = (
            f"val {self.selection_metric} mean {balance['mean']:.4f} worst {balance['min']:.4f}"
        )
        if not trainer.is_global_zero:
            return  # every process holds the same summary: one line per round
        if fitting:
            train_seconds = self.history[-1]["train_seconds"] if self.history else 0.0
            log.info(
                "round %d: %s (%.1fs: training %.1fs, validation %.1fs)",
                round_index,
                scores,
                train_seconds + validation_seconds,
                train_seconds,
                validation_seconds,
            )
        else:
            log.info(
                "round %d adapters: %s (validation %.1fs)", round_index, scores, validation_seconds
            )

    # ------------------------------------------------------------------ test
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate each client with its selected (best validation) adapter."""
        module = self._module(pl_module)
        best = self.selection.best_parameters if self.selection is not None else None
        if best is not None:
            module.load_client_parameters(best)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize the test metrics, log them and write the run's outputs."""
        module = self._module(pl_module)
        summary = summarize_test(module, self.bootstrap_resamples)
        module.log_dict(logged_test_metrics(summary), sync_dist=True)
        directory = run_directory(trainer)  # a collective: every process must ask
        # Sharded adapters are gathered by every process at once; one of them writes.
        gathered = module.gathered_adapters()
        self.test_summary, self.results_path = summary, None
        if self.write_results and trainer.is_global_zero:
            sections = run_sections(trainer, module)
            self.results_path = write_run_outputs(
                directory, module, self.run_record(), summary, sections, gathered
            )
            log.info("results written to %s", self.results_path)

    def run_record(self) -> RunRecord:
        """The rounds run, the selected rounds and the history, as plain values."""
        best_round, best_rounds = -1, []
        if self.selection is not None:
            best_round = self.selection.best_round
            best_rounds = [int(r) for r in self.selection.best_rounds]
        return RunRecord(
            self.strategy.describe(), self.rounds_run, best_round, best_rounds, self.history
        )

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Remember how many rounds the newest checkpoint holds (for the interruption notice)."""
        self.checkpointed_rounds = self.rounds_run

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors: everything a resumed run needs."""
        state: dict[str, Any] = {
            "rounds_run": self.rounds_run,
            "lr_scale": self.lr_scale,
            "history": self.history,
        }
        if self.selection is not None:
            state.update(self.selection.state_dict())
            state["selection_held"] = self.selection.held
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        self.rounds_run = state_dict["rounds_run"]
        self.lr_scale = state_dict["lr_scale"]
        self.history = state_dict["history"]
        if state_dict.get("best_scores") is not None:
            scores = state_dict["best_scores"]
            held = state_dict.get("selection_held", list(range(len(scores))))
            self.selection = ModelSelection.from_state_dict(state_dict, held)
