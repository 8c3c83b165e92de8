"""A message for a client as plain values: what a ClientApp hands the session that answers it.

Light on purpose (no Lightning, no model code): a ClientApp that forwards its message to a client
worker (:mod:`fellrec.deploy.client_worker`) imports only this, the Flower records and the worker's
connection, so its short-lived process starts in about the time Python needs for torch and flwr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def to_wire(self) -> dict[str, Any]:
        """As plain values a :mod:`fellrec.wire` message carries."""
        config = self.config
        return {
            "kind": self.kind,
            "settings": {
                "config_files": list(self.settings.config_files),
                "overrides": list(self.settings.overrides),
            },
            "client": self.client,
            "parameters": self.parameters,
            "config": (
                None
                if config is None
                else {
                    "round": config.round,
                    "lr_scale": config.lr_scale,
                    "proximal_mu": config.proximal_mu,
                    "trains": config.trains,
                }
            ),
            "stage": self.stage,
            "selection": list(self.selection) if self.selection is not None else None,
            "silo": self.silo,
        }

    @classmethod
    def from_wire(cls, value: Any) -> ClientRequest:
        """The request :meth:`to_wire` described.

        Raises:
            ValueError: Naming the field that is missing or of the wrong type.
        """
        if not isinstance(value, dict):
            raise ValueError("a client request is a dict of its fields")
        settings = _field(value, "settings", dict)
        config = _field(value, "config", dict, optional=True)
        selection = _field(value, "selection", list, optional=True)
        parameters = _field(value, "parameters", torch.Tensor, optional=True)
        silo = _field(value, "silo", str, optional=True)
        files, overrides = settings.get("config_files"), settings.get("overrides")
        if not _strings(files) or not _strings(overrides):
            raise ValueError("a client request's settings are lists of strings")
        if selection is not None and not (
            len(selection) == 2 and all(type(v) is int for v in selection)
        ):
            raise ValueError("a client request's selection is [selected round, rounds run]")
        return cls(
            kind=_field(value, "kind", str),
            settings=RunSettings(tuple(files), tuple(overrides)),
            client=_field(value, "client", int),
            parameters=parameters,
            config=(
                None
                if config is None
                else ClientRoundConfig(
                    round=_field(config, "round", int),
                    lr_scale=float(_field(config, "lr_scale", (int, float))),
                    proximal_mu=float(_field(config, "proximal_mu", (int, float))),
                    trains=_field(config, "trains", bool),
                )
            ),
            stage=_field(value, "stage", str),
            selection=(selection[0], selection[1]) if selection is not None else None,
            silo=silo,
        )


def _field(
    value: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False
) -> Any:
    """``value[name]``, checked to be a ``kind`` (or None when ``optional``)."""
    if name not in value:
        raise ValueError(f"a client request without its {name!r} field")
    field = value[name]
    if field is None and optional:
        return None
    # bool is an int in Python; an int field takes no bool.
    if not isinstance(field, kind) or (kind is int and isinstance(field, bool)):
        raise ValueError(f"a client request's {name!r} is {type(field).__name__}")
    return field


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)
