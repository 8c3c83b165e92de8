"""What crosses between the deployed server and a client, as Flower records.

Per round only this crosses: the client's parameters (adapter and item components, one flat
vector), its round config (round, learning-rate scale, proximal weight, whether it trains) and,
back, its parameters after training, summed loss, example count and divergence flag; for
evaluation, the per-client metric sums, user count and per-user metric values (for the bootstrap
intervals) and, with the final test, the popularity baseline's metric sums over the same users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fellrec.federation.protocol import ClientRoundConfig

PARAMETERS = "parameters"
CONFIG = "config"
REPORT = "report"
VALUES = "values"
#: Evaluation stages a client is asked for.
STAGES = ("validation", "test")


def parameters_record(vector: torch.Tensor) -> ArrayRecord:
    """One client's flat parameter vector (sent as float32: bf16 has no numpy type)."""
    return ArrayRecord([vector.detach().to("cpu", torch.float32).numpy()])


def parameters_from(record: RecordDict) -> torch.Tensor:
    """The flat parameter vector of a message's content."""
    arrays = record.array_records[PARAMETERS].to_numpy_ndarrays()
    return torch.from_numpy(np.array(arrays[0], copy=True))


def train_content(vector: torch.Tensor, config: ClientRoundConfig) -> RecordDict:
    """A ``train`` message: the client's parameters and round config."""
    return RecordDict(
        {
            PARAMETERS: parameters_record(vector),
            CONFIG: ConfigRecord(
                {
                    "round": config.round,
                    "lr-scale": config.lr_scale,
                    "proximal-mu": config.proximal_mu,
                    "trains": config.trains,
                }
            ),
        }
    )


def round_config_from(content: RecordDict) -> ClientRoundConfig:
    """The round config of a ``train`` message."""
    config = content.config_records[CONFIG]
    return ClientRoundConfig(
        round=int(config["round"]),  # type: ignore[arg-type]
        lr_scale=float(config["lr-scale"]),  # type: ignore[arg-type]
        proximal_mu=float(config["proximal-mu"]),  # type: ignore[arg-type]
        trains=bool(config["trains"]),
    )


def evaluate_content(
    vector: torch.Tensor, stage: str, selection: tuple[int, int] | None = None
) -> RecordDict:
    """An ``evaluate`` message: the parameters to evaluate and the stage (validation or test).

    Args:
        vector: The client's parameters.
        stage: ``"validation"`` or ``"test"``.
        selection: With the final test: (the client's selected round, rounds run), so the client
            can describe the adapter it exports.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    config = ConfigRecord({"stage": stage})
    if selection is not None:
        config["selected-round"], config["rounds-run"] = selection
    return RecordDict({PARAMETERS: parameters_record(vector), CONFIG: config})


def evaluation_request_from(content: RecordDict) -> tuple[str, tuple[int, int] | None]:
    """The stage and (for the final test) the selection of an ``evaluate`` message."""
    config = content.config_records[CONFIG]
    selection = None
    if "selected-round" in config:
        selection = (int(config["selected-round"]), int(config["rounds-run"]))  # type: ignore[arg-type]
    return str(config["stage"]), selection


@dataclass(frozen=True)
class TrainReport:
    """A client's answer to ``train``.

    Attributes:
        client: Its partition id.
        parameters: Its parameters after local training ``(P,)``.
        loss_sum: Summed training loss over its examples.
        examples: Training examples (0: it did not train).
        diverged: Whether its loss became NaN/inf.
    """

    client: int
    parameters: torch.Tensor
    loss_sum: float
    examples: float
    diverged: bool

    def content(self) -> RecordDict:
        """As a reply's content."""
        return RecordDict(
            {
                PARAMETERS: parameters_record(self.parameters),
                REPORT: MetricRecord(
                    {
                        "partition-id": self.client,
                        "loss-sum": self.loss_sum,
                        "examples": self.examples,
                        "diverged": int(self.diverged),
                    }
                ),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReport:
        """Read a reply's content."""
        report = content.metric_records[REPORT]
        return cls(
            client=int(report["partition-id"]),  # type: ignore[arg-type]
            parameters=parameters_from(content),
            loss_sum=float(report["loss-sum"]),  # type: ignore[arg-type]
            examples=float(report["examples"]),  # type: ignore[arg-type]
            diverged=bool(report["diverged"]),
        )


@dataclass(frozen=True)
class EvaluationReport:
    """A client's answer to ``evaluate``.

    Attributes:
        client: Its partition id.
        sums: Metric sums over its users ``(M,)``.
        users: Users evaluated.
        values: Each user's metric values ``(U, M)``.
        popularity: The popularity baseline's metric sums over the same users ``(M,)`` (the
            final test only), for the popularity section of the results.
    """

    client: int
    sums: torch.Tensor
    users: float
    values: torch.Tensor
    popularity: torch.Tensor | None = None

    def content(self) -> RecordDict:
        """As a reply's content."""
        arrays = [self.sums.double().numpy(), self.values.double().numpy()]
        if self.popularity is not None:
            arrays.append(self.popularity.double().numpy())
        return RecordDict(
            {
                VALUES: ArrayRecord(arrays),
                REPORT: MetricRecord({"partition-id": self.client, "users": self.users}),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluationReport:
        """Read a reply's content."""
        sums, values, *popularity = content.array_records[VALUES].to_numpy_ndarrays()
        report = content.metric_records[REPORT]
        return cls(
            client=int(report["partition-id"]),  # type: ignore[arg-type]
            sums=torch.from_numpy(np.array(sums, copy=True)),
            users=float(report["users"]),  # type: ignore[arg-type]
            values=torch.from_numpy(np.array(values, copy=True)),
            popularity=torch.from_numpy(np.array(popularity[0], copy=True)) if popularity else None,
        )


def describe_content(client: int, vector: torch.Tensor, names: list[str]) -> RecordDict:
    """A client's answer to ``query``: its partition id, initial parameters and metric names."""
    return RecordDict(
        {
            PARAMETERS: parameters_record(vector),
            REPORT: ConfigRecord({"partition-id": client, "metrics": names}),
        }
    )
