"""ClientModule: one client's side of the federation, fittable on its own.

This is what a real client silo runs: the shared base model plus **its own** adapter and optimizer,
trained and evaluated on its own users only. A deployment wraps it (e.g. in a Flower ClientApp) to
receive the server's personalized adapter and learning rate each round; in simulation the
:class:`~fellrec.training.host.federated_module.FederatedModule` hosts all clients at once with the
same code paths.
"""

from __future__ import annotations

from typing import Any

from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule


class ClientModule(FederatedModule):
    """A single client's recommender, trained locally: the host holding that one client.

    Any :class:`FederatedModule` whose data module serves one client
    (``FederatedDataModule(client=<id>)``) holds only that client's adapter and optimizer; this
    class names the client and checks that the data are its own.

    Args:
        client: The client id this module belongs to.
        **kwargs: The model settings of :class:`FederatedModule` (backbone, lora, lr, ...). Its
            round loop always runs :class:`~fellrec.federation.strategies.Local`: aggregation
            happens elsewhere (the server).
    """

    def __init__(self, client: int = 0, **kwargs: Any) -> None:
        if "strategy" in kwargs:
            raise ValueError("ClientModule trains locally; aggregation is the server's job")
        if client < 0:
            raise ValueError(f"client must be >= 0, got {client}")
        super().__init__(**kwargs)
        self.client = client
        self.hparams["client"] = client

    def build(self, datamodule: FederatedDataModule) -> None:
        """Check that the data module serves this client only, then build the model."""
        if datamodule.client != self.client:
            raise ValueError(
                f"ClientModule(client={self.client}) needs FederatedDataModule(client="
                f"{self.client}), got client={datamodule.client}"
            )
        super().build(datamodule)
