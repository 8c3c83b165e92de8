"""The Flower ClientApp: a client silo answering the server's messages with its ClientSession.

``app`` reads the fellrec config from the Flower run config (``fellrec-config``, optionally
``fellrec-overrides``) and its client id from the node config (``partition-id``), as
``flower-supernode --node-config "partition-id=0"`` or the simulation sets it, and its own data
from ``fellrec-silo`` (a silo: only this client's interaction files; without it the client
derives its partition from the config's whole dataset, as a simulation does). With
``fellrec-worker='host:port'`` in the node config the message is answered by that long-lived
client worker (:mod:`fellrec.deploy.client_worker`), which keeps the base model loaded across
messages; otherwise by a session of this process. :func:`client_app` builds one with the
settings given in Python instead.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fellrec.deploy.client_requests import ClientRequest
from fellrec.deploy.client_worker import NODE_CONFIG_KEY, ask_worker, worker_tls
from fellrec.deploy.flower_logs import plain_flower_logs
from fellrec.deploy.messages import (
    evaluation_request_from,
    parameters_from,
    round_config_from,
)
from fellrec.deploy.run_config import RunSettings
from fellrec.import_collector import first_import_paused

#: Node-config key naming a SuperNode's own data (its silo: interaction files, read with the
#: config's ``data.dataset`` format; a relative path resolves where the client runs).
SILO_KEY = "fellrec-silo"


def partition_id(context: Context) -> int:
    """The node's client id (``partition-id`` of its node config).

    Raises:
        ValueError: When the node config lacks it.
    """
    if "partition-id" not in context.node_config:
        raise ValueError(
            "this SuperNode has no 'partition-id' in its node config: start it with "
            '--node-config "partition-id=<client id>"'
        )
    return int(context.node_config["partition-id"])


def answer_on_node(request: ClientRequest, context: Context) -> Any:
    """Answer in the node's worker when its node config names one, else in this process."""
    plain_flower_logs()  # this process may be a simulation's actor, whose output goes to a file
    worker = context.node_config.get(NODE_CONFIG_KEY)
    if worker:
        tls, insecure = worker_tls(context.node_config)
        return ask_worker(str(worker), request, tls=tls, insecure=insecure)
    # Imported here: a ClientApp that forwards to a worker never loads Lightning or model code.
    # Flower starts a fresh ClientApp process per message, so this import is on every answer.
    with first_import_paused("fellrec.deploy.client_session"):
        from fellrec.deploy.client_session import answer

    return answer(request)


def client_app(settings: RunSettings | None = None) -> ClientApp:
    """A ClientApp; with ``settings`` None it reads them from the Flower run config."""
    app = ClientApp()

    def request(context: Context, kind: str, **fields: Any) -> ClientRequest:
        chosen = settings if settings is not None else RunSettings.from_flower(context.run_config)
        silo = context.node_config.get(SILO_KEY)
        return ClientRequest(
            kind, chosen, partition_id(context), silo=str(silo) if silo else None, **fields
        )

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        described = answer_on_node(request(context, "describe"), context)
        return Message(content=described.content(), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        asked = request(
            context,
            "train",
            parameters=parameters_from(message.content),
            config=round_config_from(message.content),
        )
        return Message(content=answer_on_node(asked, context).content(), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        stage, selection = evaluation_request_from(message.content)
        asked = request(
            context,
            "evaluate",
            parameters=parameters_from(message.content),
            stage=stage,
            selection=selection,
        )
        return Message(content=answer_on_node(asked, context).content(), reply_to=message)

    return app


#: The ClientApp ``flwr run`` starts (``[tool.flwr.app.components] clientapp``).
app = client_app()
