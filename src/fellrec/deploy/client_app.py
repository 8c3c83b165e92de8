"""The Flower ClientApp: a client silo answering the server's messages with its ClientSession.

``app`` reads the fellrec config from the Flower run config (``fellrec-config``, optionally
``fellrec-overrides``) and its client id from the node config (``partition-id``), as
``flower-supernode --node-config "partition-id=0"`` or the simulation sets it. :func:`client_app`
builds one with the settings given in Python instead.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fellrec.deploy.client_session import ClientSession
from fellrec.deploy.messages import (
    CONFIG,
    TrainReport,
    describe_content,
    parameters_from,
    round_config_from,
)
from fellrec.deploy.run_config import RunSettings

log = logging.getLogger(__name__)
#: Sessions of this process, by (settings, client): the base model loads once per process.
_SESSIONS: dict[tuple[RunSettings, int], ClientSession] = {}


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


def session_for(settings: RunSettings, client: int) -> ClientSession:
    """This process's session of ``client`` (built on first use)."""
    key = (settings, client)
    if key not in _SESSIONS:
        log.info("client %d: loading its model and data", client)
        _SESSIONS[key] = ClientSession(settings, client)
    return _SESSIONS[key]


def client_app(settings: RunSettings | None = None) -> ClientApp:
    """A ClientApp; with ``settings`` None it reads them from the Flower run config."""
    app = ClientApp()

    def session(context: Context) -> ClientSession:
        chosen = settings if settings is not None else RunSettings.from_flower(context.run_config)
        return session_for(chosen, partition_id(context))

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        client = session(context)
        content = describe_content(client.client, client.initial_parameters(), client.metric_names)
        return Message(content=content, reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        client = session(context)
        config = round_config_from(message.content)
        report: TrainReport = client.train(parameters_from(message.content), config)
        return Message(content=report.content(), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        client = session(context)
        stage = str(message.content[CONFIG]["stage"])
        report = client.evaluate(parameters_from(message.content), stage)
        return Message(content=report.content(), reply_to=message)

    return app


#: The ClientApp ``flwr run`` starts (``[tool.flwr.app.components] clientapp``).
app = client_app()
