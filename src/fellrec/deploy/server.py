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
from fellrec.deploy.run_config import LoadedRun
from fellrec.federation.engine import RoundEngine
from fellrec.federation.results_file import write_results

log = logging.getLogger(__name__)
#: The selected parameters of every client, one flat vector each (``client_<i>``).
PARAMETERS_FILE = "client_parameters.safetensors"
#: The server's state after its last finished round: the engine's state (the same a simulation's
#: checkpoint holds) and every client's current parameters.
STATE_FILE = "server_state.pt"


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
        self.clients.connect()
        log.info("federation: %d clients connected (%s)", self.num_clients, self.strategy.name)
        state = Path(self.run.root) / STATE_FILE
        if state.exists():
            if not self.resume:
                raise FileExistsError(
                    f"{state} holds a deployed run's state: resume it (run config resume=true) "
                    "or choose another trainer.default_root_dir"
                )
            self._load_state(state)
            log.info("resuming after round %d from %s", self.engine.rounds_run - 1, state)
        elif self.resume:
            raise FileNotFoundError(f"resume=true, but there is no {state} to resume from")
        for round_index in range(self.engine.rounds_run, self.run.rounds):
            self.engine.run_round(self.clients, round_index)
            self._save_state(state)
        summary = self.engine.test(self.clients)
        return self._write(summary)

    # ------------------------------------------------------------------ state
    def _save_state(self, path: Path) -> None:
        """Everything the next round needs (clients keep nothing between rounds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"engine": self.engine.state_dict(), "parameters": self.clients.parameters()}
        partial = path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(path)  # a crash while saving leaves the previous state whole

    def _load_state(self, path: Path) -> None:
        state = torch.load(path, weights_only=True)
        parameters = state["parameters"]
        if parameters.shape[0] != self.num_clients:
            raise ValueError(
                f"{path} holds {parameters.shape[0]} clients, the config "
                f"data.num_clients={self.num_clients}"
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
