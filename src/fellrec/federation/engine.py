"""The round engine: one object that runs a federation's rounds and keeps its record.

Simulation (the Lightning :class:`~fellrec.training.rounds.loop.FederatedLoop`) and deployment (the
Flower :class:`~fellrec.deploy.server.FederationServer`) drive the same :class:`RoundEngine`
through one :class:`FederationHost` interface, as Flower's ``Strategy.start()`` drives a grid.
The engine owns everything a round decides and records:

- the strategy's calls (``configure_round`` before, ``aggregate`` after local training) and the
  learning-rate scales they carry from round to round;
- per-client model selection on validation (:class:`~fellrec.federation.selection.ModelSelection`);
- the history (one record per round: losses, learning rates, heating weights, similarity,
  divergence and absence, validation summary, timings) and the one log line per round;
- the test summary with bootstrap intervals, the evaluation slices (popularity, history length,
  the client's unseen items: :mod:`fellrec.metrics.slices`) of the model and of the popularity
  baseline, and the one ``results.json`` schema;
- the resume state (plain values and tensors).

A host is what holds the clients: the simulation's module (all clients in one process, trained by
Lightning between the engine's calls) or the deployment's connection to the client nodes
(trained when the round starts). The engine imports neither Lightning nor Flower.

Longer than most modules: it is the one round engine of simulation and deployment (one copy of
the round logic, by design); its parts are modules of their own (strategies, selection,
protocol, results file, metrics and slices), and what is left is the state machine of a round.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fellrec.federation.protocol import ClientRoundConfig, round_inputs, round_record
from fellrec.federation.selection import ModelSelection
from fellrec.federation.strategies import Strategy
from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.slices import SLICE_LOGGED_METRICS, slice_summary, values_by_name
from fellrec.metrics.summary import BALANCE_METRICS, metric_names, summarize

log = logging.getLogger(__name__)

#: Evaluation stages a host is asked for.
STAGES = ("validation", "test")
#: The top-level keys of every ``results.json``, in order (simulation and deployment alike;
#: a section that does not apply to a run is ``None``).
RESULTS_KEYS = (
    "strategy",
    "strategy_settings",
    "config",
    "deployment",
    "rounds_run",
    "best_round",
    "client_best_rounds",
    "overall",
    "clients",
    "balance",
    "ci",
    "slices",
    "popularity",
    "resources",
    "privacy",
    "dp_sgd",
    "history",
)


@dataclass(frozen=True)
class TrainingReport:
    """What the clients report after a round's local training.

    Attributes:
        parameters: The held clients' parameters after training ``(S, P)``, rows in the host's
            ``held_clients`` order (a client that did not report holds its round-start row).
        round_start: The parameters they started the round with ``(S, P)``.
        loss_sums: Summed training loss by client id ``(N,)``.
        examples: Training examples by client id ``(N,)`` (0: did not train or report).
        diverged: ``(N,)`` bool; clients whose loss became NaN/inf.
        absent: Clients that did not report at all (a deployed node that did not answer).
        privacy_spent: Under DP-SGD, each client's ``(epsilon, delta)`` after the round by client
            id ``(N, 2)`` (NaN: no DP-SGD, or not reported); None: no client trains with it.
    """

    parameters: torch.Tensor
    round_start: torch.Tensor
    loss_sums: torch.Tensor
    examples: torch.Tensor
    diverged: torch.Tensor
    absent: tuple[int, ...] = ()
    privacy_spent: torch.Tensor | None = None


@dataclass(frozen=True)
class UserValues:
    """Every evaluated user's metric values, for bootstrap intervals.

    Attributes:
        clients: Each user's client ``(U,)``, client-major (all of client 0's users first).
        values: Each user's metric values ``(U, M)``.
        slices: Which evaluation slices each user is in, slice name -> bool ``(U,)``
            (:meth:`fellrec.metrics.slices.SliceDefinition.membership`); None where the host
            does not know them (a deployment's server knows no user's targets).
    """

    clients: torch.Tensor
    values: torch.Tensor
    slices: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Evaluation:
    """What the clients report for one evaluation pass.

    Attributes:
        sums: Metric sums by client id ``(N, M)``.
        users: Evaluated users by client id ``(N,)``.
        names: The metric names (columns).
        values: Per-user values (the test; None where a host does not gather them).
        popularity_sums: The popularity baseline's metric sums over the same users ``(N, M)``,
            when every client that answered reported them.
        popularity_values: The popularity baseline's per-user values (the test).
        popularity_users: The baseline's evaluated users by client ``(N,)`` (default: ``users``).
        absent: Clients that did not answer.
        slice_cuts: The slices' cut points (:meth:`~fellrec.metrics.slices.SliceDefinition.cuts`),
            recorded with them.
    """

    sums: torch.Tensor
    users: torch.Tensor
    names: list[str]
    values: UserValues | None = None
    popularity_sums: torch.Tensor | None = None
    popularity_values: UserValues | None = None
    popularity_users: torch.Tensor | None = None
    absent: tuple[int, ...] = ()
    slice_cuts: Mapping[str, Any] | None = None


class FederationHost(Protocol):
    """What holds the clients, as the engine sees it.

    The rows of every ``(S, P)`` parameter matrix follow :attr:`held_clients`; every other
    per-client tensor is indexed by client id ``0..N-1``.
    """

    @property
    def num_clients(self) -> int:
        """N: the federation's clients."""
        ...

    @property
    def held_clients(self) -> list[int]:
        """The clients whose parameters this host holds, one row each."""
        ...

    def start_round(self, round_index: int, configs: Mapping[int, ClientRoundConfig]) -> None:
        """Start local training as each held client's config says."""
        ...

    def training_report(self) -> TrainingReport:
        """The round's results (once its local training is over)."""
        ...

    def load_parameters(self, parameters: torch.Tensor, identical: bool = False) -> None:
        """Load every held client's parameters ``(S, P)`` (``identical``: all rows equal)."""
        ...

    def parameters(self) -> torch.Tensor:
        """The held clients' current parameters ``(S, P)``."""
        ...

    def evaluation(self, stage: str, selected_rounds: list[int] | None = None) -> Evaluation:
        """The clients' metrics of the loaded parameters on ``stage`` (validation or test).

        ``selected_rounds`` (the final test) tells each client which round it is tested with.
        """
        ...


def privacy_spent_record(spent: torch.Tensor) -> dict[str, list[float | None]]:
    """A round's ``dp`` entry: each held client's epsilon and delta (None where not reported).

    Args:
        spent: ``(S, 2)`` epsilon and delta per held client, NaN where not reported.
    """

    def values(column: torch.Tensor) -> list[float | None]:
        return [None if math.isnan(float(v)) else float(v) for v in column]

    return {"epsilon": values(spent[:, 0]), "delta": values(spent[:, 1])}


def log_info(message: str) -> None:
    """The default announcer: an INFO line on this module's logger (every process)."""
    log.info(message)


class RoundEngine:
    """Runs a federation's rounds through a host and keeps the run's record.

    Args:
        strategy: The strategy the rounds run.
        num_clients: N: the federation's clients.
        held_clients: The clients whose parameters the host holds (rows of the parameter
            matrices; default all N).
        base_lr: The base learning rate (the history records each client's scaled rate).
        selection_metric: Validation metric of the per-client model selection and the run's
            ``best_round``.
        bootstrap_resamples: Resamples of the test users for the confidence intervals (0: none).
        announce: Where the round lines go (the simulation passes a rank-zero logger).
        warn: Where warnings about absent, idle or diverged clients go.
    """

    def __init__(
        self,
        strategy: Strategy,
        num_clients: int,
        held_clients: list[int] | None = None,
        base_lr: float = 1.0,
        selection_metric: str = "ndcg@10",
        bootstrap_resamples: int = 1000,
        announce: Callable[[str], None] = log_info,
        warn: Callable[[str], None] = warnings.warn,
    ) -> None:
        if bootstrap_resamples < 0:
            raise ValueError(f"loop.bootstrap_resamples must be >= 0, got {bootstrap_resamples}")
        known = metric_names()
        if selection_metric not in known:
            raise ValueError(
                f"loop.selection_metric={selection_metric!r} is unknown; choose from "
                f"{', '.join(known)}"
            )
        self.strategy = strategy
        self.num_clients = num_clients
        self.held = list(range(num_clients)) if held_clients is None else list(held_clients)
        self.base_lr = base_lr
        self.selection_metric = selection_metric
        self.bootstrap_resamples = bootstrap_resamples
        self.announce = announce
        self.warn = warn
        self.rounds_run = 0
        self.lr_scale = torch.ones(len(self.held), dtype=torch.float64)
        self.selection = ModelSelection(num_clients, self.held)
        self.history: list[dict[str, Any]] = []
        #: Called with each round's report as the server receives it, before aggregation (the
        #: privacy probe plays an honest-but-curious server with it).
        self.observers: list[Callable[[int, TrainingReport], None]] = []
        #: The last test's summary.
        self.test_summary: dict[str, Any] | None = None
        #: The popularity baseline on the validation users (the first validation's).
        self.validation_popularity: dict[str, Any] | None = None
        self._round = -1
        self._training = False
        #: The parameters the last aggregation loaded: what this round's validation evaluates,
        #: so the selection keeps them without asking the host for a second copy.
        self._aggregated: torch.Tensor | None = None
        self._round_started = 0.0
        self._validation_started = 0.0

    # ------------------------------------------------------------------ a round
    @property
    def training(self) -> bool:
        """Whether a round's local training has started and not been aggregated yet."""
        return self._training

    def start_round(self, host: FederationHost, round_index: int) -> None:
        """Configure round ``round_index`` (the strategy's learning rates) and start it."""
        self._check_host(host)
        config = self.strategy.configure_round(round_index, len(self.held), self.lr_scale)
        configs = {client: config.for_client(slot) for slot, client in enumerate(self.held)}
        self._round = round_index
        self._training = True
        self._round_started = time.perf_counter()
        host.start_round(round_index, configs)

    def finish_training(self, host: FederationHost, step: int | None = None) -> dict[str, Any]:
        """Aggregate the round's local training and load every client's new parameters.

        Args:
            host: The host that trained the round.
            step: The global optimizer step after the round (the simulation's loggers use it).

        Returns:
            The round's history record (validation is added by :meth:`finish_validation`).
        """
        round_index = self._round
        self._training = False
        report = host.training_report()
        for observe in self.observers:
            observe(round_index, report)
        slots = torch.tensor(self.held)
        examples = report.examples[slots]
        if not self.strategy.pools_clients:
            for client in slots[examples <= 0].tolist():
                if client not in report.absent:
                    self.warn(f"round {round_index}: client {client} had no training example")
        if report.absent:
            self.warn(
                f"round {round_index}: clients {list(report.absent)} did not report; they sit "
                "this round out"
            )
        diverged = report.diverged.nonzero().flatten().tolist()
        for client in diverged:
            self.warn(
                f"round {round_index}: client {client}'s loss became NaN/inf; it keeps its "
                "parameters from the round start and is left out of the aggregation"
            )
        inputs = round_inputs(
            round_index,
            report.parameters,
            report.round_start,
            report.loss_sums[slots],
            examples,
            report.diverged[slots],
        )
        result = self.strategy.aggregate(inputs)
        host.load_parameters(result.theta, identical=self.strategy.shares_model)
        self._aggregated = result.theta
        self.lr_scale = result.lr_scale.double()
        self.rounds_run = round_index + 1
        record = round_record(round_index, inputs, result, self.base_lr)
        record["diverged"] = diverged
        record["absent"] = list(report.absent)
        if report.privacy_spent is not None:
            record["dp"] = privacy_spent_record(report.privacy_spent[slots])
        # Training and aggregation; validation adds `val_seconds`, `seconds` is the sum.
        record["train_seconds"] = time.perf_counter() - self._round_started
        record["seconds"] = record["train_seconds"]
        if step is not None:
            record["step"] = step
        self.history.append(record)
        return record

    def start_validation(self) -> None:
        """Mark the start of a validation pass (for its timing)."""
        self._validation_started = time.perf_counter()

    def finish_validation(self, host: FederationHost, fitting: bool = True) -> dict[str, Any]:
        """Select each client's parameters on the validation the host ran; log the round.

        Args:
            host: The host that evaluated the loaded parameters.
            fitting: Whether this validation ends a training round (else it evaluates a saved
                run's parameters, e.g. ``fellrec validate``).

        Returns:
            The validation summary (``summarize()`` output; empty when no client reported a
            validation user).
        """
        evaluation = host.evaluation("validation")
        if evaluation.absent:
            self.warn(f"validation: clients {list(evaluation.absent)} did not report")
        round_index = self.rounds_run - 1
        if float(evaluation.users.sum()) == 0:
            # Nobody answered (or nobody has validation users): nothing to select on this round.
            self._aggregated = None
            self.warn(
                f"round {round_index}: no client reported a validation user; every client keeps "
                "its selection"
            )
            return {}
        summary = self._summarize(evaluation.sums, evaluation.users, evaluation.names)
        # Each round's slices: means, and intervals of the logged metrics only (cheap).
        slices = self._slices(
            evaluation.values,
            evaluation.names,
            evaluation.slice_cuts,
            (*SLICE_LOGGED_METRICS, self.selection_metric),
        )
        if slices is not None:
            summary["slices"] = slices
        if self.validation_popularity is None and evaluation.popularity_sums is not None:
            # The level validation curves are read against (the same in every round).
            self.validation_popularity = self._summarize(
                evaluation.popularity_sums,
                self._popularity_users(evaluation),
                evaluation.names,
            )
        column = evaluation.names.index(self.selection_metric)
        overall = summary["overall"]
        assert isinstance(overall, dict)
        # The parameters just aggregated are the ones evaluated; a validation without a round
        # before it (a resumed or saved run) asks the host.
        parameters = self._aggregated if self._aggregated is not None else host.parameters()
        self.selection.update(
            round_index,
            evaluation.sums[:, column] / evaluation.users.clamp_min(1),
            evaluation.users,
            parameters,
            float(overall[self.selection_metric]),
        )
        self._aggregated = None
        seconds = time.perf_counter() - self._validation_started
        balance = summary["balance"][self.selection_metric]
        scores = (
            f"val {self.selection_metric} mean {balance['mean']:.4f} worst {balance['min']:.4f}"
        )
        record = self.history[-1] if self.history else None
        if fitting and record is not None and record["round"] == round_index:
            if "dp" in record:
                spent = [e for e in record["dp"]["epsilon"] if e is not None]
                if spent:
                    scores += f", DP epsilon <= {max(spent):.2f}"
            record["val"] = summary
            record["val_seconds"] = seconds
            record["seconds"] = record["train_seconds"] + seconds
            self.announce(
                f"round {round_index}: {scores} ({record['seconds']:.1f}s: training "
                f"{record['train_seconds']:.1f}s, validation {seconds:.1f}s)"
            )
        else:
            self.announce(f"round {round_index} adapters: {scores} (validation {seconds:.1f}s)")
        return summary

    def rounds_without_improvement(self) -> int:
        """Validated rounds since the best overall validation score (early stopping's count).

        Lightning's ``EarlyStopping`` on ``val/<selection metric>`` (mode max, no ``min_delta``)
        stops when this reaches its ``patience``; a deployment applies the same rule.
        """
        if self.selection.best_round < 0:
            return 0
        return self.rounds_run - 1 - self.selection.best_round

    def run_round(self, host: FederationHost, round_index: int) -> dict[str, Any]:
        """A whole round on a host that trains when the round starts (a deployment).

        Returns:
            The round's history record, validation included.
        """
        self.start_round(host, round_index)
        record = self.finish_training(host)
        self.start_validation()
        self.finish_validation(host)
        return record

    # ------------------------------------------------------------------ the test
    def start_test(self, host: FederationHost) -> None:
        """Load each client's selected (best validation) parameters."""
        if self.selection.best_parameters is not None:
            host.load_parameters(self.selection.best_parameters)

    def finish_test(self, host: FederationHost) -> dict[str, Any]:
        """The test's summary: per-client, overall and balance, intervals, the popularity baseline.

        Returns:
            ``summarize()`` output plus ``"ci"`` (None without resamples or per-user values)
            and ``"popularity"`` (None where the host has no baseline).
        """
        evaluation = host.evaluation("test", self.selected_rounds)
        if evaluation.absent:
            self.warn(f"test: clients {list(evaluation.absent)} did not report")
        if float(evaluation.users.sum()) == 0:
            absent = (
                f" (clients {list(evaluation.absent)} did not answer)" if evaluation.absent else ""
            )
            raise RuntimeError(
                f"the test evaluated no user{absent}: nothing to report; the rounds' state is "
                "kept, so the test can run again once the clients answer"
            )
        summary = self._summarize(evaluation.sums, evaluation.users, evaluation.names)
        summary["ci"] = self._intervals(evaluation.values, evaluation.names)
        cuts, names = evaluation.slice_cuts, evaluation.names
        summary["slices"] = self._slices(evaluation.values, names, cuts)
        summary["popularity"] = None
        if evaluation.popularity_sums is not None:
            popularity = self._summarize(
                evaluation.popularity_sums, self._popularity_users(evaluation), evaluation.names
            )
            popularity["ci"] = self._intervals(evaluation.popularity_values, evaluation.names)
            popularity["slices"] = self._slices(evaluation.popularity_values, names, cuts)
            if self.validation_popularity is not None:
                popularity["validation"] = self.validation_popularity
            summary["popularity"] = popularity
        self.test_summary = summary
        return summary

    def test(self, host: FederationHost) -> dict[str, Any]:
        """Test every client with its selected parameters (a deployment's final pass)."""
        self.start_test(host)
        return self.finish_test(host)

    @staticmethod
    def _popularity_users(evaluation: Evaluation) -> torch.Tensor:
        if evaluation.popularity_users is not None:
            return evaluation.popularity_users
        return evaluation.users

    def _summarize(
        self, sums: torch.Tensor, users: torch.Tensor, names: list[str]
    ) -> dict[str, Any]:
        # The selection metric gets balance statistics even where the defaults leave it out.
        balanced = (*BALANCE_METRICS, self.selection_metric)
        return dict(summarize(sums, users, names, balance_metrics=balanced))

    def _intervals(self, values: UserValues | None, names: list[str]) -> dict[str, Any] | None:
        if values is None or self.bootstrap_resamples == 0:
            return None
        per_user = {name: values.values[:, j] for j, name in enumerate(names)}
        return confidence_intervals(
            per_user, values.clients, self.num_clients, names, self.bootstrap_resamples
        )

    def _slices(
        self,
        values: UserValues | None,
        names: list[str],
        cuts: Mapping[str, Any] | None,
        interval_metrics: tuple[str, ...] | None = None,
    ) -> dict[str, Any] | None:
        """The slices' summary (None where the host gave no slice membership)."""
        if values is None or values.slices is None:
            return None
        return slice_summary(
            values_by_name(values.values, names),
            values.slices,
            values.clients,
            self.num_clients,
            names,
            cuts,
            interval_metrics=interval_metrics,
            resamples=self.bootstrap_resamples,
        )

    # ------------------------------------------------------------------ the record
    @property
    def selected_rounds(self) -> list[int]:
        """Each client's selected round (-1: never validated)."""
        return [int(r) for r in self.selection.best_rounds]

    def results(self, test_summary: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
        """The run's ``results.json`` content, in the one schema (:data:`RESULTS_KEYS`).

        Args:
            test_summary: :meth:`finish_test` output.
            **sections: The host's sections (``config``, ``deployment``, ``resources``,
                ``privacy``, a callback's own section); ``popularity`` overrides the summary's.

        Returns:
            Every key of :data:`RESULTS_KEYS` (None where a section does not apply), then any
            further section.
        """
        known = {
            "strategy": self.strategy.name,
            "strategy_settings": self.strategy.describe(),
            "rounds_run": self.rounds_run,
            "best_round": self.selection.best_round,
            "client_best_rounds": self.selected_rounds,
            **test_summary,
            "dp_sgd": self.privacy_spent(),
            "history": self.history,
        }
        merged = {**known, **sections}
        ordered = {key: merged.pop(key, None) for key in RESULTS_KEYS}
        history = ordered.pop("history")
        return {**ordered, **merged, "history": history}

    def privacy_spent(self) -> dict[str, Any] | None:
        """Under DP-SGD, each client's (epsilon, delta) over the whole run (None: no DP-SGD).

        Each client's last report: its total, since every round adds to it (a client absent
        from the last round keeps what it reported before). ``after_round`` is the last round
        any client reported.
        """
        reported = [record for record in self.history if "dp" in record]
        if not reported:
            return None
        width = len(reported[-1]["dp"]["epsilon"])
        spent: dict[str, list[float | None]] = {"epsilon": [None] * width, "delta": [None] * width}
        for record in reported:
            for key in ("epsilon", "delta"):
                for slot, value in enumerate(record["dp"][key]):
                    if value is not None:
                        spent[key][slot] = value
        return {"after_round": reported[-1]["round"], **spent}

    # ------------------------------------------------------------------ resume state
    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors: everything a resumed run needs."""
        return {
            "rounds_run": self.rounds_run,
            "lr_scale": self.lr_scale,
            "history": self.history,
            **self.selection.state_dict(),
            "selection_held": self.selection.held,
            "validation_popularity": self.validation_popularity,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state :meth:`state_dict` saved.

        Raises:
            ValueError: When the state holds another number of clients than this federation.
        """
        scores = state.get("best_scores")
        if scores is not None and len(scores) != self.num_clients:
            raise ValueError(
                f"the saved state holds {len(scores)} clients, this federation "
                f"{self.num_clients} (data.num_clients)"
            )
        held = list(
            state.get("selection_held", self.held if scores is None else range(len(scores)))
        )
        lr_scale = state["lr_scale"]
        if held != self.held or (lr_scale is not None and len(lr_scale) != len(self.held)):
            raise ValueError(
                f"the saved state holds clients {held}, this host {self.held}: resume it with "
                "the data settings it was saved with"
            )
        self.rounds_run = int(state["rounds_run"])
        if lr_scale is not None:
            self.lr_scale = lr_scale.double()
        self.history = list(state["history"])
        if scores is not None:
            self.selection = ModelSelection.from_state_dict(dict(state), held)
        self._aggregated, self._training, self.test_summary = None, False, None
        self.validation_popularity = state.get("validation_popularity")

    # ------------------------------------------------------------------ checks
    def _check_host(self, host: FederationHost) -> None:
        if list(host.held_clients) != self.held:
            raise ValueError(
                f"the host holds clients {list(host.held_clients)}, the engine was built for "
                f"{self.held}"
            )
