"""What crosses between the deployed server and a client, as Flower records.

Per round only this crosses: the client's parameters (adapter and item components, one flat
vector), its round config (round, learning-rate scale, proximal weight, whether it trains) and,
back, its parameters after training, summed loss, example count and divergence flag; for
evaluation, the per-client metric sums, user count and per-user metric values (for the bootstrap
intervals), and the popularity baseline's metric sums and per-user values over the same users. A
node describes itself once (partition id, initial parameters, metric names, and the fingerprints
of its config and item catalog, so that a node with another config or catalog is refused).
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
        privacy_spent: Under DP-SGD, its ``(epsilon, delta)`` after the round; None: no DP-SGD.
    """

    client: int
    parameters: torch.Tensor
    loss_sum: float
    examples: float
    diverged: bool
    privacy_spent: tuple[float, float] | None = None

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
                        **(
                            {}
                            if self.privacy_spent is None
                            else {
                                "dp-epsilon": self.privacy_spent[0],
                                "dp-delta": self.privacy_spent[1],
                            }
                        ),
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
            privacy_spent=(
                (float(report["dp-epsilon"]), float(report["dp-delta"]))  # type: ignore[arg-type]
                if "dp-epsilon" in report
                else None
            ),
        )


@dataclass(frozen=True)
class EvaluationReport:
    """A client's answer to ``evaluate``.

    Attributes:
        client: Its partition id.
        sums: Metric sums over its users ``(M,)``.
        users: Users evaluated.
        values: Each user's metric values ``(U, M)``.
        popularity: The popularity baseline's metric sums over the same users ``(M,)``, for
            the popularity section of the results.
        popularity_values: The baseline's per-user values ``(U, M)`` (with ``popularity``),
            for its intervals.
    """

    client: int
    sums: torch.Tensor
    users: float
    values: torch.Tensor
    popularity: torch.Tensor | None = None
    popularity_values: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.popularity is None) != (self.popularity_values is None):
            raise ValueError("popularity sums and per-user values go together")

    def content(self) -> RecordDict:
        """As a reply's content."""
        arrays = [self.sums.double().numpy(), self.values.double().numpy()]
        if self.popularity is not None and self.popularity_values is not None:
            arrays += [self.popularity.double().numpy(), self.popularity_values.double().numpy()]
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
        baseline = [torch.from_numpy(np.array(a, copy=True)) for a in popularity]
        return cls(
            client=int(report["partition-id"]),  # type: ignore[arg-type]
            sums=torch.from_numpy(np.array(sums, copy=True)),
            users=float(report["users"]),  # type: ignore[arg-type]
            values=torch.from_numpy(np.array(values, copy=True)),
            popularity=baseline[0] if baseline else None,
            popularity_values=baseline[1] if baseline else None,
        )


@dataclass(frozen=True)
class NodeDescription:
    """A client's answer to ``query``: who it is and what it starts from.

    Attributes:
        client: Its partition id.
        parameters: Its initial parameters ``(P,)`` (the same on every node: seeded).
        metric_names: The evaluation metrics, in the order of its reports' columns.
        config_hash: The fingerprint of its fellrec config, which must equal the server's.
        catalog_hash: The fingerprint of its item catalog (ids, titles, categories in index
            order), which must equal every other client's.
    """

    client: int
    parameters: torch.Tensor
    metric_names: list[str]
    config_hash: str | None = None
    catalog_hash: str | None = None

    def content(self) -> RecordDict:
        """As a reply's content."""
        described = ConfigRecord({"partition-id": self.client, "metrics": list(self.metric_names)})
        if self.config_hash is not None:
            described["config-hash"] = self.config_hash
        if self.catalog_hash is not None:
            described["catalog-hash"] = self.catalog_hash
        return RecordDict({PARAMETERS: parameters_record(self.parameters), REPORT: described})

    @classmethod
    def from_content(cls, content: RecordDict) -> NodeDescription:
        """Read a reply's content."""
        described = content.config_records[REPORT]
        config_hash = described.get("config-hash")
        catalog_hash = described.get("catalog-hash")
        return cls(
            client=int(described["partition-id"]),  # type: ignore[arg-type]
            parameters=parameters_from(content),
            metric_names=list(described["metrics"]),  # type: ignore[arg-type]
            config_hash=str(config_hash) if config_hash is not None else None,
            catalog_hash=str(catalog_hash) if catalog_hash is not None else None,
        )
