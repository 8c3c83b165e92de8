"""A FederatedModule as the round engine's host (simulation: every client in one process).

Lightning trains and evaluates between the engine's calls; this adapter only hands the engine
what the module collected (losses, parameters, metric sums) and loads what the engine decided.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fellrec.federation.engine import Evaluation, TrainingReport, UserValues
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.training.batches.datamodule import federated_datamodule
from fellrec.training.host.federated_module import FederatedModule


class ModuleHost:
    """:class:`~fellrec.federation.engine.FederationHost` over a built :class:`FederatedModule`.

    Args:
        module: The module (its trainer's data module serves the popularity baseline).
    """

    def __init__(self, module: FederatedModule) -> None:
        self.module = module

    @property
    def num_clients(self) -> int:
        """N."""
        return self.module.num_clients

    @property
    def held_clients(self) -> list[int]:
        """The module's clients, one adapter slot each."""
        return list(self.module.held_clients)

    def start_round(self, round_index: int, configs: Mapping[int, ClientRoundConfig]) -> None:
        """Set each client's learning rate and proximal weight; Lightning then trains."""
        self.module.start_round(round_index, configs)

    def training_report(self) -> TrainingReport:
        """Losses, example counts and divergence (summed over processes), and the parameters."""
        loss_sums, examples, diverged = self.module.collect_round_stats()
        return TrainingReport(
            parameters=self.module.release_parameters(),  # (S, P), as sent
            round_start=self.module.round_start_parameters(),
            loss_sums=loss_sums,
            examples=examples,
            diverged=diverged,
            privacy_spent=self.module.privacy_spent(),
        )

    def load_parameters(self, parameters: torch.Tensor, identical: bool = False) -> None:
        """Load every slot's parameters ``(S, P)``."""
        self.module.load_client_parameters(parameters, identical=identical)

    def parameters(self) -> torch.Tensor:
        """Every slot's current parameters ``(S, P)``."""
        return self.module.client_parameters()

    def evaluation(self, stage: str, selected_rounds: list[int] | None = None) -> Evaluation:
        """What Lightning's validation or test pass collected (a collective under DDP).

        With the popularity baseline on the same users, every user's values and their
        evaluation slices (the data module knows each user's targets and training data).
        """
        sums, users, names = self.module.collect_eval()
        datamodule = federated_datamodule(self.module.trainer)
        held = self.module.held_clients
        baseline = datamodule.popularity_of(held, stage)
        popularity_sums, popularity_users, popularity_clients, popularity_values = baseline
        clients, values = self.module.collect_eval_values()
        user_ids = self.module.collect_eval_users()
        baseline_ids = datamodule.popularity_users_of(held, stage)
        cuts = datamodule.slices.cuts() if datamodule.slices is not None else None
        return Evaluation(
            sums,
            users,
            list(names),
            values=UserValues(clients, values, datamodule.slice_membership(stage, user_ids)),
            popularity_sums=popularity_sums,
            popularity_values=UserValues(
                popularity_clients,
                popularity_values,
                datamodule.slice_membership(stage, baseline_ids),
            ),
            popularity_users=popularity_users,
            slice_cuts=cuts,
        )
