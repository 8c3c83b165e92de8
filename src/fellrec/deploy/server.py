"""The deployed server: the round engine driven over Flower messages.

The rounds are the :class:`~fellrec.federation.engine.RoundEngine`'s, as in simulation: per round
each client is sent **its own** parameters and round config, trains, reports; the strategy
aggregates; every client is evaluated on its validation users with its new parameters and keeps
its best round's; at the end each client is tested with its selected parameters, and
``results.json`` is written in the same schema as ``fellrec fit``'s. This module only wires the
engine to the client nodes (:class:`~fellrec.deploy.remote_clients.RemoteClients`: messaging,
node discovery, rejoin) and keeps the engine's state on disk after every round so a server that
dies resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from safetensors.torch import save_file

from fellrec.deploy.remote_clients import RemoteClients
from fellrec.deploy.run_config import LoadedRun, resume_fingerprint
from fellrec.federation.engine import RoundEngine
from fellrec.federation.results_file import write_results

log = logging.getLogger(__name__)
#: The selected parameters of every client, one flat vector each (``client_<i>``).
PARAMETERS_FILE = "client_parameters.safetensors"
#: The server's state after its last finished round: the engine's state (the same a simulation's
#: checkpoint holds) and every client's current parameters.
STATE_FILE = "server_state.pt"
#: The layout of :data:`STATE_FILE` this version writes and reads.
STATE_LAYOUT = 2


class FederationServer:
    """Runs a deployed federation on a Flower grid.

    Args:
        run: The loaded fellrec config (strategy, clients, rounds, selection, output directory).
        grid: The Flower grid the ServerApp was given.
        round_timeout: Seconds to wait for the clients' answers to one message (None: no limit).
        wait_timeout: Seconds to wait for every client's node to connect at the start.
        resume: Continue the run whose state (``server_state.pt``, saved after every round) lies
            in ``trainer.default_root_dir``; without it an existing state is refused, not
            overwritten.
        sleep: Pause between polls for nodes (tests pass a fake).
        make_message: Builds a message from content, destination node and type (Flower's
            ``Message`` by default; it needs a running Flower run, so unit tests pass their own).
    """

    def __init__(
        self,
        run: LoadedRun,
        grid: Grid,
        round_timeout: float | None = None,
        wait_timeout: float = 600.0,
        resume: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        make_message: Callable[[RecordDict, int, str], Message] | None = None,
    ) -> None:
        self.run = run
        self.resume = resume
        self.num_clients = run.datamodule.num_clients
        self.strategy = run.strategy
        self.clients = RemoteClients(
            grid,
            self.num_clients,
            config_hash=run.config_hash if run.config else None,
            round_timeout=round_timeout,
            wait_timeout=wait_timeout,
            sleep=sleep,
            make_message=make_message,
        )
        self.engine = RoundEngine(
            self.strategy,
            self.num_clients,
            base_lr=run.model.lr,
            selection_metric=run.loop.selection_metric,
            bootstrap_resamples=run.loop.bootstrap_resamples,
            announce=log.info,
            warn=log.warning,
        )

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rounds' records."""
        return self.engine.history

    def fit(self) -> Path:
        """Run every round, select each client's parameters on validation, test, write results.

        Returns:
            The path of ``results.json``.
        """
        # The run's own state is checked before waiting for the nodes: a wrong `resume` is
        # said at once, not after every client has loaded its model and data.
        state = Path(self.run.root) / STATE_FILE
        saved = None
        if state.exists():
            if not self.resume:
                raise FileExistsError(
                    f"{state} holds a deployed run's state: resume it (run config resume=true) "
                    "or choose another trainer.default_root_dir"
                )
            saved = self._read_state(state)
        elif self.resume:
            raise FileNotFoundError(f"resume=true, but there is no {state} to resume from")
        self.clients.connect()
        log.info("federation: %d clients connected (%s)", self.num_clients, self.strategy.name)
        if saved is not None:
            self._restore(state, saved)
            log.info("resuming after round %d from %s", self.engine.rounds_run - 1, state)
        patience = self.run.stop_patience
        for round_index in range(self.engine.rounds_run, self.run.rounds):
            if patience is not None and self.engine.rounds_without_improvement() >= patience:
                break  # as the simulation's EarlyStopping would have stopped before this round
            self.engine.run_round(self.clients, round_index)
            self._save_state(state)
        if patience is not None and self.engine.rounds_run < self.run.rounds:
            log.info(
                "early stopping: no better val/%s for %d rounds (best round %d)",
                self.engine.selection_metric,
                patience,
                self.engine.selection.best_round,
            )
        summary = self.engine.test(self.clients)
        return self._write(summary)

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> str:
        """What a resumed run must share with the saved one: the config, all but the rounds."""
        return resume_fingerprint(self.run.config)

    def _save_state(self, path: Path) -> None:
        """Everything the next round needs (clients keep nothing between rounds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "layout": STATE_LAYOUT,
            "config_hash": self._fingerprint(),
            "engine": self.engine.state_dict(),
            "parameters": self.clients.parameters(),
        }
        partial = path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(path)  # a crash while saving leaves the previous state whole

    def _read_state(self, path: Path) -> dict[str, Any]:
        """The saved state, checked against this run's config before any node is waited for.

        Raises:
            ValueError: For a state of another layout, config or number of clients.
        """
        state = torch.load(path, weights_only=True)
        if not isinstance(state, dict) or state.get("layout") != STATE_LAYOUT:
            raise ValueError(
                f"{path} was written by another fellrec version (state layout "
                f"{state.get('layout') if isinstance(state, dict) else None}, this version "
                f"reads {STATE_LAYOUT}): resume it with that version, or start a new run in "
                "another trainer.default_root_dir"
            )
        if self.run.config and state["config_hash"] != self._fingerprint():
            raise ValueError(
                f"{path} was saved by a run with another config (model, data, loop or "
                "strategy settings differ): resume with the same config files and overrides"
            )
        if state["parameters"].shape[0] != self.num_clients:
            raise ValueError(
                f"{path} holds {state['parameters'].shape[0]} clients, the config "
                f"data.num_clients={self.num_clients}"
            )
        return state

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        """Load the saved state, once the nodes said what their parameters look like."""
        parameters = state["parameters"]
        width = self.clients.parameters().shape[1]
        if parameters.shape[1] != width:
            raise ValueError(
                f"{path} holds {parameters.shape[1]} parameters per client, the clients "
                f"{width}: it was saved with another model"
            )
        self.engine.load_state_dict(state["engine"])
        self.clients.load_parameters(parameters)
        self.clients.rounds_run = self.engine.rounds_run

    def _write(self, summary: dict[str, Any]) -> Path:
        directory = Path(self.run.root)
        nodes = {str(c): n for c, n in self.clients.nodes.items()}
        results = self.engine.results(
            summary,
            config=self.run.config or None,
            deployment={"engine": "flower", "nodes": nodes},
        )
        path = write_results(directory, results)
        best = self.engine.selection.best_parameters
        assert best is not None
        save_file(
            {f"client_{c}": row.contiguous() for c, row in enumerate(best)},
            str(directory / PARAMETERS_FILE),
        )
        log.info("results written to %s", path)
        return path
