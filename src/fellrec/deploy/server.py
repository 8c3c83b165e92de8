"""The deployed server: the round loop of a fellrec federation over Flower messages.

It runs what :class:`fellrec.training.loop.FederatedLoop` runs in simulation, through the same
pure pieces (round protocol, strategy, per-client model selection, summaries): per round each
client is sent **its own** parameters and round config, trains, reports; the strategy aggregates;
every client is evaluated on its validation users with its new parameters and keeps its best
round's; at the end each client is tested with its selected parameters. A client that does not
answer in time takes no part in that round (it keeps its parameters) and may answer again later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from safetensors.torch import save_file

from fellrec.deploy.messages import (
    REPORT,
    EvaluationReport,
    TrainReport,
    evaluate_content,
    parameters_from,
    train_content,
)
from fellrec.deploy.run_config import LoadedRun
from fellrec.federation.protocol import round_inputs, round_record
from fellrec.federation.selection import ModelSelection
from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.summary import summarize
from fellrec.training.results import RESULTS_FILE, json_safe

log = logging.getLogger(__name__)
#: The selected parameters of every client, one flat vector each (``client_<i>``).
PARAMETERS_FILE = "client_parameters.safetensors"
#: The server's state after its last finished round (parameters, learning rates, selection).
STATE_FILE = "server_state.pt"


def flower_message(content: RecordDict, node: int, kind: str) -> Message:
    """A Flower message of type ``kind`` for node ``node``."""
    return Message(content=content, dst_node_id=node, message_type=kind)


class Evaluated(NamedTuple):
    """The clients' reports of one evaluation, gathered.

    Attributes:
        sums: Per-client metric sums ``(N, M)``.
        users: Per-client users ``(N,)``.
        clients: Every evaluated user's client ``(U,)``.
        values: Every evaluated user's metric values ``(U, M)``.
        popularity: The popularity baseline's per-client sums over the same users ``(N, M)``,
            when every client that answered reported it (the final test).
    """

    sums: torch.Tensor
    users: torch.Tensor
    clients: torch.Tensor
    values: torch.Tensor
    popularity: torch.Tensor | None


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
        self.grid = grid
        self.round_timeout = round_timeout
        self.wait_timeout = wait_timeout
        self.resume = resume
        self.sleep = sleep
        self.make_message = make_message or flower_message
        self.num_clients = run.datamodule.num_clients
        self.strategy = run.strategy
        self.history: list[dict[str, Any]] = []
        self.nodes: dict[int, int] = {}  # client -> node id
        self.metric_names: list[str] = []

    # ------------------------------------------------------------------ messaging
    def _send(self, contents: dict[int, RecordDict], kind: str) -> dict[int, RecordDict]:
        """Send each client its own message; the answers that came, by client."""
        messages = {
            client: self.make_message(content, self.nodes[client], kind)
            for client, content in contents.items()
        }
        replies: Iterable[Message] = self.grid.send_and_receive(
            list(messages.values()), timeout=self.round_timeout
        )
        # Pushing gives every message its id; a reply names the message it answers (an error
        # reply about an unreachable node comes from the SuperLink, not from the node).
        by_message = {
            message_id: client
            for client, message in messages.items()
            if (message_id := getattr(message.metadata, "message_id", None))
        }
        by_node = {node: client for client, node in self.nodes.items()}
        answers: dict[int, RecordDict] = {}
        for reply in replies:
            client = by_message.get(getattr(reply.metadata, "reply_to_message_id", None))
            if client is None:
                client = by_node.get(reply.metadata.src_node_id)
            if client is None:
                continue
            if reply.has_error():
                log.warning("client %d answered %s with an error: %s", client, kind, reply.error)
                continue
            answers[client] = reply.content
        return answers

    def _rejoin(self) -> None:
        """Learn which clients the nodes that connected since the last round are (rejoins)."""
        unknown = sorted(set(self.grid.get_node_ids()) - set(self.nodes.values()))
        if not unknown:
            return
        queries = [self.make_message(RecordDict(), node, MessageType.QUERY) for node in unknown]
        for reply in self.grid.send_and_receive(queries, timeout=self.round_timeout):
            if reply.has_error():
                continue
            client = int(reply.content[REPORT]["partition-id"])  # type: ignore[arg-type]
            if 0 <= client < self.num_clients:
                log.info("client %d rejoined (node %d)", client, reply.metadata.src_node_id)
                self.nodes[client] = reply.metadata.src_node_id

    def _connect(self) -> torch.Tensor:
        """Wait for every client's node; learn which node is which client; initial parameters."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= self.num_clients:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(node_ids)} of {self.num_clients} client nodes connected in "
                    f"{self.wait_timeout:.0f} s (data.num_clients={self.num_clients})"
                )
            self.sleep(1.0)
        queries = [self.make_message(RecordDict(), node, MessageType.QUERY) for node in node_ids]
        initial: dict[int, torch.Tensor] = {}
        for reply in self.grid.send_and_receive(queries, timeout=self.wait_timeout):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} failed: {reply.error}")
            described = reply.content[REPORT]
            client = int(described["partition-id"])  # type: ignore[arg-type]
            if not 0 <= client < self.num_clients or client in self.nodes:
                raise ValueError(
                    f"node {reply.metadata.src_node_id} says it is client {client}: each of "
                    f"the {self.num_clients} clients needs exactly one node (partition-id)"
                )
            self.nodes[client] = reply.metadata.src_node_id
            self.metric_names = list(described["metrics"])  # type: ignore[arg-type]
            initial[client] = parameters_from(reply.content)
        missing = sorted(set(range(self.num_clients)) - set(self.nodes))
        if missing:
            raise RuntimeError(f"clients {missing} did not answer the server's first query")
        log.info("federation: %d clients connected (%s)", self.num_clients, self.strategy.name)
        return torch.stack([initial[c] for c in range(self.num_clients)])

    # ------------------------------------------------------------------ rounds
    def _train_round(
        self, round_index: int, theta: torch.Tensor, lr_scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        started = time.perf_counter()
        self._rejoin()
        config = self.strategy.configure_round(round_index, self.num_clients, lr_scale)
        answers = self._send(
            {
                c: train_content(theta[c], config.for_client(c))
                for c in range(self.num_clients)
                if config.for_client(c).trains
            },
            MessageType.TRAIN,
        )
        trained = theta.clone()
        loss_sums = torch.zeros(self.num_clients, dtype=torch.float64)
        examples = torch.zeros(self.num_clients, dtype=torch.float64)
        diverged = torch.zeros(self.num_clients, dtype=torch.bool)
        for client, content in answers.items():
            report = TrainReport.from_content(content)
            trained[client] = report.parameters.to(theta.dtype)
            loss_sums[client] = report.loss_sum
            examples[client] = report.examples
            diverged[client] = report.diverged
        absent = [c for c in range(self.num_clients) if c not in answers]
        if absent:
            log.warning(
                "round %d: clients %s did not report; they sit this round out", round_index, absent
            )
        inputs = round_inputs(round_index, trained, theta, loss_sums, examples, diverged)
        result = self.strategy.aggregate(inputs)
        record = round_record(round_index, inputs, result, self.run.model.lr)
        record["diverged"] = diverged.nonzero().flatten().tolist()
        record["absent"] = absent
        record["train_seconds"] = time.perf_counter() - started
        return result.theta, result.lr_scale.double(), record

    def _evaluate(
        self, theta: torch.Tensor, stage: str, selected_rounds: list[int] | None = None
    ) -> Evaluated:
        """What the clients report for ``stage`` (absent clients count no users).

        With ``selected_rounds`` (the final test) each client is told its selected round, and
        exports the adapter it is sent.
        """
        answers = self._send(
            {
                c: evaluate_content(
                    theta[c],
                    stage,
                    None if selected_rounds is None else (selected_rounds[c], self.run.rounds),
                )
                for c in range(self.num_clients)
            },
            MessageType.EVALUATE,
        )
        sums = torch.zeros(self.num_clients, len(self.metric_names), dtype=torch.float64)
        users = torch.zeros(self.num_clients, dtype=torch.float64)
        popularity: torch.Tensor | None = torch.zeros_like(sums)
        clients, values = [], []
        for client, content in sorted(answers.items()):
            report = EvaluationReport.from_content(content)
            sums[client], users[client] = report.sums, report.users
            clients.append(torch.full((report.values.shape[0],), client))
            values.append(report.values)
            if popularity is not None and report.popularity is not None:
                popularity[client] = report.popularity
            else:
                popularity = None
        absent = [c for c in range(self.num_clients) if c not in answers]
        if absent:
            log.warning("%s: clients %s did not report", stage, absent)
        width = len(self.metric_names)
        return Evaluated(
            sums,
            users,
            torch.cat(clients) if clients else torch.zeros(0, dtype=torch.long),
            torch.cat(values) if values else torch.zeros(0, width, dtype=torch.float64),
            popularity if answers else None,
        )

    def fit(self) -> Path:
        """Run every round, select each client's parameters on validation, test, write results.

        Returns:
            The path of ``results.json``.
        """
        theta = self._connect()
        selection = ModelSelection(self.num_clients)
        metric = self.run.loop.selection_metric
        lr_scale: torch.Tensor | None = None
        first = 0
        state = self._state_path()
        if state.exists():
            if not self.resume:
                raise FileExistsError(
                    f"{state} holds a deployed run's state: resume it (run config resume=true) "
                    "or choose another trainer.default_root_dir"
                )
            first, theta, lr_scale, selection = self._load_state(state)
            log.info("resuming after round %d from %s", first - 1, state)
        elif self.resume:
            raise FileNotFoundError(f"resume=true, but there is no {state} to resume from")
        for round_index in range(first, self.run.rounds):
            theta, lr_scale, record = self._train_round(round_index, theta, lr_scale)
            started = time.perf_counter()
            sums, users, *_ = self._evaluate(theta, "validation")
            summary = summarize(sums, users, self.metric_names)
            column = self.metric_names.index(metric)
            overall = summary["overall"]
            assert isinstance(overall, dict)
            selection.update(
                round_index, sums[:, column] / users.clamp_min(1), users, theta, overall[metric]
            )
            record["val"] = summary
            record["val_seconds"] = time.perf_counter() - started
            record["seconds"] = record["train_seconds"] + record["val_seconds"]
            self.history.append(record)
            self._save_state(state, round_index + 1, theta, lr_scale, selection)
            balance = summary["balance"][metric]
            log.info(
                "round %d: val %s mean %.4f worst %.4f (%.1fs)",
                round_index,
                metric,
                balance["mean"],
                balance["min"],
                record["seconds"],
            )
        assert selection.best_parameters is not None
        test = self._evaluate(
            selection.best_parameters, "test", [int(r) for r in selection.best_rounds]
        )
        summary = summarize(test.sums, test.users, self.metric_names)
        if test.popularity is not None:
            # The clients' popularity baseline on the same test users (without intervals:
            # its per-user values stay on the clients).
            summary["popularity"] = summarize(test.popularity, test.users, self.metric_names)
        if self.run.loop.bootstrap_resamples > 0:
            per_user = {name: test.values[:, j] for j, name in enumerate(self.metric_names)}
            summary["ci"] = confidence_intervals(
                per_user,
                test.clients,
                self.num_clients,
                self.metric_names,
                self.run.loop.bootstrap_resamples,
            )
        return self._write(selection, summary)

    # ------------------------------------------------------------------ state
    def _state_path(self) -> Path:
        return Path(self.run.root) / STATE_FILE

    def _save_state(
        self,
        path: Path,
        rounds_run: int,
        theta: torch.Tensor,
        lr_scale: torch.Tensor,
        selection: ModelSelection,
    ) -> None:
        """Everything the next round needs (clients keep nothing between rounds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "rounds_run": rounds_run,
            "theta": theta,
            "lr_scale": lr_scale,
            "selection": selection.state_dict(),
            "history": self.history,
        }
        partial = path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(path)  # a crash while saving leaves the previous state whole

    def _load_state(self, path: Path) -> tuple[int, torch.Tensor, torch.Tensor, ModelSelection]:
        state = torch.load(path, weights_only=True)
        if state["theta"].shape[0] != self.num_clients:
            raise ValueError(
                f"{path} holds {state['theta'].shape[0]} clients, the config "
                f"data.num_clients={self.num_clients}"
            )
        self.history = state["history"]
        selection = ModelSelection.from_state_dict(
            state["selection"], list(range(self.num_clients))
        )
        return int(state["rounds_run"]), state["theta"], state["lr_scale"], selection

    def _write(self, selection: ModelSelection, summary: dict[str, Any]) -> Path:
        directory = Path(self.run.root)
        directory.mkdir(parents=True, exist_ok=True)
        results = {
            "strategy": self.strategy.name,
            "strategy_settings": self.strategy.describe(),
            "deployment": {"engine": "flower", "nodes": {str(c): n for c, n in self.nodes.items()}},
            "rounds_run": self.run.rounds,
            "best_round": selection.best_round,
            "client_best_rounds": [int(r) for r in selection.best_rounds],
            **summary,
            "history": self.history,
        }
        path = directory / RESULTS_FILE
        path.write_text(json.dumps(json_safe(results), indent=2))
        assert selection.best_parameters is not None
        save_file(
            {f"client_{c}": row.contiguous() for c, row in enumerate(selection.best_parameters)},
            str(directory / PARAMETERS_FILE),
        )
        log.info("results written to %s", path)
        return path
