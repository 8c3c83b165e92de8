"""The deployed clients as the round engine's host: Flower messages, node discovery, rejoin.

:class:`RemoteClients` holds every client's parameters on the server and carries the engine's
calls to the client nodes: a round's start sends each client **its own** parameters and round
config and waits for the reports; an evaluation sends the parameters to evaluate. A client that
does not answer in time sits the round out (it keeps its parameters) and may answer again later,
from a restarted node too (:meth:`RemoteClients.rejoin`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fellrec.deploy.messages import (
    EvaluationReport,
    NodeDescription,
    TrainReport,
    evaluate_content,
    train_content,
)
from fellrec.federation.engine import Evaluation, TrainingReport, UserValues
from fellrec.federation.protocol import ClientRoundConfig

log = logging.getLogger(__name__)


def flower_message(content: RecordDict, node: int, kind: str) -> Message:
    """A Flower message of type ``kind`` for node ``node``."""
    return Message(content=content, dst_node_id=node, message_type=kind)


class RemoteClients:
    """The client nodes of a deployed federation, one per client (partition id).

    Args:
        grid: The Flower grid the ServerApp was given.
        num_clients: N (``data.num_clients``): the server waits for that many nodes.
        config_hash: The server's config fingerprint: a node whose config differs is refused.
        round_timeout: Seconds to wait for the clients' answers to one message (None: no limit).
        wait_timeout: Seconds to wait for every client's node to connect at the start.
        sleep: Pause between polls for nodes (tests pass a fake).
        make_message: Builds a message from content, destination node and type (Flower's
            ``Message`` by default; it needs a running Flower run, so unit tests pass their own).
    """

    def __init__(
        self,
        grid: Grid,
        num_clients: int,
        config_hash: str | None = None,
        round_timeout: float | None = None,
        wait_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        make_message: Callable[[RecordDict, int, str], Message] | None = None,
    ) -> None:
        self.grid = grid
        self._num_clients = num_clients
        self.config_hash = config_hash
        self.round_timeout = round_timeout
        self.wait_timeout = wait_timeout
        self.sleep = sleep
        self.make_message = make_message or flower_message
        self.nodes: dict[int, int] = {}  # client -> node id
        #: The catalog fingerprint the first node described; every other node must match it.
        self.catalog_hash: str | None = None
        self.metric_names: list[str] = []
        #: Every client's current parameters ``(N, P)`` (known after :meth:`connect`).
        self.theta: torch.Tensor | None = None
        self.rounds_run = 0
        self._report: TrainingReport | None = None

    # ------------------------------------------------------------------ host interface
    @property
    def num_clients(self) -> int:
        """N."""
        return self._num_clients

    @property
    def held_clients(self) -> list[int]:
        """The server holds every client's parameters."""
        return list(range(self._num_clients))

    def parameters(self) -> torch.Tensor:
        """Every client's current parameters ``(N, P)``."""
        if self.theta is None:
            raise RuntimeError("no client has connected yet (call connect() first)")
        return self.theta

    def load_parameters(self, parameters: torch.Tensor, identical: bool = False) -> None:
        """What each client is sent next ``(N, P)``."""
        self.theta = parameters

    def start_round(self, round_index: int, configs: Mapping[int, ClientRoundConfig]) -> None:
        """Send every training client its parameters and config; wait for the reports."""
        self.rejoin()
        theta = self.parameters()
        answers = self._send(
            {
                client: train_content(theta[client], config)
                for client, config in configs.items()
                if config.trains
            },
            MessageType.TRAIN,
        )
        trained = theta.clone()
        loss_sums = torch.zeros(self.num_clients, dtype=torch.float64)
        examples = torch.zeros(self.num_clients, dtype=torch.float64)
        diverged = torch.zeros(self.num_clients, dtype=torch.bool)
        spent = torch.full((self.num_clients, 2), float("nan"), dtype=torch.float64)
        for client, content in answers.items():
            report = TrainReport.from_content(content)
            trained[client] = report.parameters.to(theta.dtype)
            loss_sums[client] = report.loss_sum
            examples[client] = report.examples
            diverged[client] = report.diverged
            if report.privacy_spent is not None:
                spent[client] = torch.tensor(report.privacy_spent, dtype=torch.float64)
        absent = tuple(c for c, config in configs.items() if config.trains and c not in answers)
        self._report = TrainingReport(
            trained,
            theta,
            loss_sums,
            examples,
            diverged,
            absent,
            privacy_spent=None if bool(spent.isnan().all()) else spent,
        )
        self.rounds_run = round_index + 1

    def training_report(self) -> TrainingReport:
        """The reports of the round :meth:`start_round` ran."""
        if self._report is None:
            raise RuntimeError("no round has run")
        report, self._report = self._report, None
        return report

    def evaluation(self, stage: str, selected_rounds: list[int] | None = None) -> Evaluation:
        """What the clients report for ``stage`` (absent clients count no users).

        With ``selected_rounds`` (the final test) each client is told its selected round, and
        exports the adapter it is sent.
        """
        theta = self.parameters()
        answers = self._send(
            {
                c: evaluate_content(
                    theta[c],
                    stage,
                    None if selected_rounds is None else (selected_rounds[c], self.rounds_run),
                )
                for c in range(self.num_clients)
            },
            MessageType.EVALUATE,
        )
        width = len(self.metric_names)
        sums = torch.zeros(self.num_clients, width, dtype=torch.float64)
        users = torch.zeros(self.num_clients, dtype=torch.float64)
        popularity: torch.Tensor | None = torch.zeros_like(sums)
        popularity_users = torch.zeros_like(users)
        clients, values, popularity_clients, popularity_values = [], [], [], []
        for client, content in sorted(answers.items()):
            report = EvaluationReport.from_content(content)
            sums[client], users[client] = report.sums, report.users
            clients.append(torch.full((report.values.shape[0],), client))
            values.append(report.values)
            if popularity is not None and report.popularity is not None:
                popularity[client] = report.popularity
                assert report.popularity_values is not None
                popularity_users[client] = report.popularity_values.shape[0]
                popularity_clients.append(torch.full((report.popularity_values.shape[0],), client))
                popularity_values.append(report.popularity_values)
            else:
                popularity = None
        absent = tuple(c for c in range(self.num_clients) if c not in answers)
        return Evaluation(
            sums,
            users,
            list(self.metric_names),
            values=_user_values(clients, values, width),
            popularity_sums=popularity if answers else None,
            popularity_values=(
                _user_values(popularity_clients, popularity_values, width)
                if popularity is not None and answers
                else None
            ),
            popularity_users=popularity_users if popularity is not None else None,
            absent=absent,
        )

    # ------------------------------------------------------------------ nodes
    def connect(self) -> None:
        """Wait for every client's node; learn which node is which client; initial parameters.

        Raises:
            TimeoutError: When fewer nodes than clients connect in time.
            ValueError: When two nodes claim the same partition id, or a node's config differs.
            RuntimeError: When a node fails to describe itself.
        """
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
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise RuntimeError(f"node {node} failed: {reply.error}")
            described = NodeDescription.from_content(reply.content)
            client = self._admit(described, node)
            if client in self.nodes:
                raise ValueError(
                    f"nodes {self.nodes[client]} and {node} both say they are client {client} "
                    f"(partition-id): each of the {self.num_clients} clients needs exactly one node"
                )
            self.nodes[client] = node
            self.metric_names = described.metric_names
            initial[client] = described.parameters
        missing = sorted(set(range(self.num_clients)) - set(self.nodes))
        if missing:
            raise RuntimeError(f"clients {missing} did not answer the server's first query")
        self.theta = torch.stack([initial[c] for c in range(self.num_clients)])

    def rejoin(self) -> None:
        """Learn which clients the nodes that connected since the last round are (rejoins)."""
        live = set(self.grid.get_node_ids())
        unknown = sorted(live - set(self.nodes.values()))
        if not unknown:
            return
        queries = [self.make_message(RecordDict(), node, MessageType.QUERY) for node in unknown]
        for reply in self.grid.send_and_receive(queries, timeout=self.round_timeout):
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            try:
                client = self._admit(NodeDescription.from_content(reply.content), node)
            except ValueError as error:
                log.warning("%s; it is left out", error)
                continue
            previous = self.nodes.get(client)
            if previous is not None and previous in live:
                log.warning(
                    "node %d says it is client %d, which node %d (still connected) is: it is "
                    "left out (two nodes cannot claim one partition-id)",
                    node,
                    client,
                    previous,
                )
                continue
            log.info("client %d rejoined (node %d)", client, node)
            self.nodes[client] = node

    def _admit(self, described: NodeDescription, node: int) -> int:
        """The client a node says it is, once its partition id and config are checked."""
        client = described.client
        if not 0 <= client < self.num_clients:
            raise ValueError(
                f"node {node} says it is client {client} (partition-id), but the federation has "
                f"clients 0-{self.num_clients - 1} (data.num_clients={self.num_clients})"
            )
        if self.config_hash is not None and described.config_hash is None:
            raise ValueError(
                f"node {node} (client {client}) does not describe its config: it runs an older "
                "fellrec than the server; install the same fellrec version on every party"
            )
        if self.config_hash is not None and described.config_hash != self.config_hash:
            raise ValueError(
                f"node {node} (client {client}) runs another fellrec config than the server "
                f"(config fingerprint {described.config_hash} vs {self.config_hash}): start it "
                "with the same config files and overrides"
            )
        if described.catalog_hash is not None:
            if self.catalog_hash is None:
                self.catalog_hash = described.catalog_hash
            elif described.catalog_hash != self.catalog_hash:
                raise ValueError(
                    f"node {node} (client {client}) indexes another item catalog than the "
                    f"nodes before it (catalog fingerprint {described.catalog_hash} vs "
                    f"{self.catalog_hash}): every party needs the same data.catalog file"
                )
        return client

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


def _user_values(clients: list[torch.Tensor], values: list[torch.Tensor], width: int) -> UserValues:
    """Concatenated per-user values, client-major (the clients' answers in client order)."""
    if not clients:
        return UserValues(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, width, dtype=torch.float64)
        )
    return UserValues(torch.cat(clients), torch.cat(values))
