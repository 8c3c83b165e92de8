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
"""
