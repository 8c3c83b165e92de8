"""The Lightning layer, one subpackage per job.

- :mod:`~fellrec.training.batches`: the data module and each round's training schedule;
- :mod:`~fellrec.training.host`: the LightningModules that host the clients (the federated
  module, a lone client), their settings, model assembly, recommender families, optimizers,
  checkpoints, tallies and their links to other processes and to the block server;
- :mod:`~fellrec.training.dp`: user-level DP-SGD, its secrets and its privacy ledger;
- :mod:`~fellrec.training.rounds`: the ``FederatedLoop`` callback that drives the round engine,
  with its strategy, progress display and interruption notices;
- :mod:`~fellrec.training.records`: what a run records (``results.json``, ``metrics.csv``, adapters,
  resources, the round's logged keys);
- :mod:`~fellrec.training.probes`: the honest-but-curious server played during a run.

The classes a user builds a run from (:data:`PUBLIC`) are importable from this package itself.
"""

from importlib import import_module
from typing import Any

#: The public classes, importable as ``from fellrec.training import ...`` whichever room they live
#: in (the rooms may move; these names stay). Loaded on first use: importing the package stays
#: cheap.
PUBLIC = {
    "ClientModule": "fellrec.training.host.client_module",
    "FederatedModule": "fellrec.training.host.federated_module",
    "FederatedDataModule": "fellrec.training.batches.datamodule",
    "FederatedLoop": "fellrec.training.rounds.loop",
}

__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    """One of :data:`PUBLIC`, imported from its module on first use."""
    if name not in PUBLIC:
        raise AttributeError(f"module 'fellrec.training' has no attribute {name!r}")
    return getattr(import_module(PUBLIC[name]), name)
