"""ClientModule: one client's side of the federation, fittable on its own.

This is what a real client silo runs: the shared base model plus **its own** adapter and optimizer,
trained and evaluated on its own users only. A deployment wraps it (e.g. in a Flower ClientApp) to
receive the server's personalized adapter and learning rate each round; in simulation the
:class:`~fellrec.training.federated_module.FederatedModule` hosts all clients at once with the same
code paths.
"""

from __future__ import annotations

from typing import Any

from fellrec.federation.strategies import Local
from fellrec.training.datamodule import federated_datamodule
from fellrec.training.federated_module import FederatedModule


class ClientModule(FederatedModule):
    """A single client's recommender (one adapter slot), trained locally.

    Pair it with ``FederatedDataModule(client=<id>, ...)``, which serves only that client's data.

    Args:
        client: The client id this module belongs to.
        **kwargs: The model settings of :class:`FederatedModule` (backbone, lora, lr, ...). Its
            round loop always runs :class:`~fellrec.federation.strategies.Local`: aggregation
            happens elsewhere (the server).
    """

    def __init__(self, client: int = 0, **kwargs: Any) -> None:
        if "strategy" in kwargs:
            raise ValueError("ClientModule trains locally; aggregation is the server's job")
        super().__init__(**kwargs)
        self.host_strategy = Local()
        if client < 0:
            raise ValueError(f"client must be >= 0, got {client}")
        self.client = client
        self.hparams["client"] = client

    @property
    def num_slots(self) -> int:
        """A client holds one adapter: its own."""
        return 1

    def slot(self, client: int) -> int:
        """Every batch must be this client's."""
        if client != self.client:
            raise ValueError(
                f"ClientModule for client {self.client} received a batch of client {client}; "
                f"use FederatedDataModule(client={self.client})"
            )
        return 0

    def slot_client(self, slot: int) -> int:
        """The only slot holds this client's adapter."""
        return self.client

    def setup(self, stage: str) -> None:
        """Check that the data module serves this client only, then build the model."""
        datamodule = federated_datamodule(self.trainer)
        if datamodule.client != self.client:
            raise ValueError(
                f"ClientModule(client={self.client}) needs FederatedDataModule(client="
                f"{self.client}), got client={datamodule.client}"
            )
        super().setup(stage)
