"""A message for a client as plain values: what a ClientApp hands the session that answers it.

Light on purpose (no Lightning, no model code): a ClientApp that forwards its message to a client
worker (:mod:`fellrec.deploy.client_worker`) imports only this, the Flower records and the worker's
connection, so its short-lived process starts in about the time Python needs for torch and flwr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fellrec.deploy.run_config import RunSettings
from fellrec.federation.protocol import ClientRoundConfig

#: Request kinds a client answers (one per Flower message type it handles).
REQUEST_KINDS = ("describe", "train", "evaluate")


@dataclass(frozen=True)
class ClientRequest:
    """One message for a client, as plain values (what a ClientApp hands its session).

    Attributes:
        kind: ``"describe"`` (partition id, initial parameters, metric names, fingerprints),
            ``"train"`` or ``"evaluate"``.
        settings: The run's fellrec settings (from the Flower run config).
        client: The node's partition id.
        parameters: The parameters sent (train, evaluate).
        config: The round config (train).
        stage: ``"validation"`` or ``"test"`` (evaluate).
        selection: (selected round, rounds run) with the final test (evaluate).
        silo: The node's own data (node config ``fellrec-silo``: its interaction files, read
            with the config's ``data.dataset`` format), or None when the client derives its
            data from the config's dataset (a simulated partition).
    """

    kind: str
    settings: RunSettings
    client: int
    parameters: torch.Tensor | None = None
    config: ClientRoundConfig | None = None
    stage: str = ""
    selection: tuple[int, int] | None = None
    silo: str | None = None
